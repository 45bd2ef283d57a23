"""Where a step executes: in this process (local, the default) or on a Dask cluster.

The run driver (runner/engine/run.py) stays on the server: scheduling, templates,
retries, handlers, compensation, approvals, child runs. Only the execution of a
rendered step crosses this seam, as plain data (runner/dispatch/job.py).
"""
