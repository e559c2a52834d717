"""Ray Serve plumbing: the handle-backed engine adapter and the application's build arguments."""
