"""What the app and the figures read: the live session, a results directory, comparisons."""
