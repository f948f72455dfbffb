import sys, os, torch
sys.path.insert(0, "/work/wip15")
mode, out = sys.argv[1], sys.argv[2]
from c3llm.training import ModelArguments, DataArguments, load_model_and_processor, prepare_model, OBJECTIVES, LOSS_PARTS, run_training
from c3llm.data.collator import C3LLMDataCollator
from tests.test_training import train_args
import numpy as np
from datasets import Dataset
def text_video_dataset(n):
    rng = np.random.default_rng(0)
    return Dataset.from_dict({"task": ["text-to-audio"] * 8, "caption": ["a dog barks", "a cat meows", "rain on tin", "a door slam"] * 2,
                              "audio_codes": [rng.integers(0, 1024, (2, 6)).tolist() for _ in range(8)]})
from transformers import TrainerCallback
margs = ModelArguments(model_name_or_path="/tmp/tinyweb2", stage=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
common = dict(max_steps=4, learning_rate=5e-3, train_sampling_strategy="sequential", dataloader_drop_last=True)
if mode == "single":
    class Keep(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kw):
            torch.save({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, os.path.join(out, "trainable.pt"))
    run_training(margs, DataArguments(), train_args(out, per_device_train_batch_size=4, **common), train_dataset=text_video_dataset(8), callbacks=[Keep()])
else:
    from c3llm.sharded import ShardedTrainer
    import torch.distributed as dist
    from transformers import set_seed
    set_seed(0)
    model, processor = load_model_and_processor(margs)
    set_seed(0)
    model = prepare_model(model, margs)
    t = ShardedTrainer(model, train_args(out, **common), C3LLMDataCollator(processor), text_video_dataset(8), OBJECTIVES[1], LOSS_PARTS, 4)
    t.train(); sd = t.full_trainable_state_dict()
    if t.rank == 0:
        torch.save({k: v.clone() for k, v in sd.items()}, os.path.join(out, "trainable.pt")); print("LOG", t.log_history)
    dist.destroy_process_group()
