"""The indexing job, in data-flow order: listing → fetch → decode → classify (+CRM) → encode →
write, planned per bucket and chained on Ray Data by :mod:`xai_pipeline.job.pipeline`."""
