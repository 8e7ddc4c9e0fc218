"""Where rows live: locations and S3 clients, the Delta table, run records, the table lease and
the run summary. Shared by the job and the read side; imports neither torch nor Ray."""
