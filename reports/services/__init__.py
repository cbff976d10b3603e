"""Sales reports, as typed functions by role. Views, tasks, admin actions and commands call these.

- periods: daily, weekly (ISO), monthly and custom periods, and the rules a period must keep.
- requesting: ask for a report (or find the scheduled one), regenerate it.
- generation: claim the report, aggregate its slices (a chord of slice rows with leases),
  merge the rows, mark the report done.
- figures: one slice's GROUP BY queries, and the merge of the slices' figures.
- sweeps: re-send what was lost, finish what the chord left, fail what was started too often.
- cancelling: cancel a pending or running report; its slices stop, it keeps no files.
- files: the CSV and the chart, written to storage.
- emails: "your report is ready", through the notifications outbox.

Revenue counts completed orders only, by the date they were placed in TIME_ZONE.
"""
