import os, sys, torch, torch.distributed as dist
sys.path.insert(0, "/work/wip15")
from c3llm.training import ModelArguments, load_model_and_processor, prepare_model, OBJECTIVES, LOSS_PARTS
from c3llm.data.collator import C3LLMDataCollator
from c3llm.sharded import ShardedTrainer
from tests.test_training import train_args, text_video_dataset
out, resume = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
margs = ModelArguments(model_name_or_path="/tmp/tinyweb2", stage=1, lora_r=4, lora_alpha=8, lora_dropout=0.0)
model, processor = load_model_and_processor(margs)
torch.manual_seed(0)
model = prepare_model(model, margs)
args = train_args(out, max_steps=4, save_strategy="steps", save_steps=2, learning_rate=5e-3)
t = ShardedTrainer(model, args, C3LLMDataCollator(processor), text_video_dataset(8), OBJECTIVES[1], LOSS_PARTS, 4)
m = t.train(resume)
t.save_state()
sd = t.full_trainable_state_dict()
if t.rank == 0:
    print("METRICS", m, t.log_history, len(sd), list(sd)[:3], flush=True)
    torch.save({k: v.clone() for k, v in sd.items()}, os.path.join(out, "trainable.pt"))
dist.destroy_process_group()
