"""The web demo as a Hugging Face Space runs it: `python app.py` (README "Web demo").

The model is `$C3LLM_MODEL` (a Hub id or a folder), else the folder `model/` next to this file. The Space's Gradio
SDK sets GRADIO_SERVER_NAME=0.0.0.0 and the port; run locally, it listens on 127.0.0.1:7860 as `c3llm serve` does.
"""

import os
import sys
from pathlib import Path

from c3llm.web.app import serve

if __name__ == "__main__":
    model = os.environ.get("C3LLM_MODEL") or str(Path(__file__).with_name("model"))
    if not os.environ.get("C3LLM_MODEL") and not Path(model).is_dir():
        sys.exit("app.py: set C3LLM_MODEL to a Hub id or folder, or put the model folder at ./model "
                 "(`c3llm build --tiny --out model` makes a tiny one).")  # fmt: skip
    serve(model, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
          port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))  # fmt: skip
