"""The permission filesystem: one FUSE mount serving a view of a codebase per sandbox."""
