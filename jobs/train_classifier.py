"""Ray job entry point for training (add ``--ray --use-gpu --num-workers N`` for Ray Train).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/train_classifier.py --data s3://data/modality/manifest.jsonl --out /mnt/models/v2 --ray --use-gpu --num-workers 4

Takes the same flags as ``xai-pipeline train``.
"""

import sys

from xai_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
