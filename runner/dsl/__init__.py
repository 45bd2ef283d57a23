"""The workflow language: YAML with positions -> validated Definition -> DAG; params and durations."""
