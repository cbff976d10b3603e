"""Sales reports, as typed functions by role. Views, tasks, admin actions and commands call these.

- periods: daily, weekly (ISO), monthly and custom periods, and the rules a period must keep.
- requesting: ask for a report (or find the scheduled one), regenerate it.
- generation: aggregate the slices (a chord for long periods), merge them, mark the report done.
- files: the CSV and the chart, written to storage.
- emails: "your report is ready", through the notifications outbox.

Revenue counts completed orders only, by the date they were placed in TIME_ZONE.
"""
