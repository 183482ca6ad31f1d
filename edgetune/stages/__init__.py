"""One driver per stage over one interface (base.py): finetune, prune, quantize, export, compile (bundle)."""
