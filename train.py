"""Pretrain an encoder: ``accelerate launch train.py --task cpc_audio [--dataset ...] [key=value ...]``."""
import sys

from mmssl.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
