"""What people and other tools read: tables, summaries, reports, plots, exports."""
