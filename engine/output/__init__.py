"""What a person sees: progress bars, the summary and reports, the event log."""
