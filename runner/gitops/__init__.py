"""The definitions folder and the GitOps loop: catalog, watcher, git facts, git sync."""
