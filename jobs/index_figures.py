"""Ray job entry point for the index job.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/index_figures.py --input s3://figures/pmc/ --output s3://tables/figures

Takes the same flags as ``xai-pipeline index``; inside a Ray job it joins the job's cluster.
"""

import sys

from xai_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
