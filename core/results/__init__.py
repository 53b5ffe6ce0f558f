"""The results store: a sweep's directory, its manifest, damage checks, views and merge."""
