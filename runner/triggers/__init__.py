"""What starts runs: the launcher (pause, concurrency, queue, chaining), schedules, files, events, notifications."""
