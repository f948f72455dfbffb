"""The web demo: `c3llm serve` (and the Space's `app.py`) serve a Gradio page with one tab per task.

`runner` runs one request without Gradio; `app` builds the page around it and serves it. Needs the `web` extra
(`pip install "c3llm[web]"`); the model and the rest of the application do not.
"""
