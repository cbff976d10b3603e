"""Sales reports, as typed functions by role. Views, tasks, admin actions and commands call these.

- periods: daily, weekly (ISO), monthly and custom periods, and the rules a period must keep.
- requesting: ask for a report (or find the scheduled one), regenerate it.
- generation: claim the report, write its slice rows and send them as a chord (or run them inline).
- slices: claim one slice, aggregate it, record its figures on its row.
- finishing: merge the slice rows, write the files, mark the report done.
- failing: what those steps share: the claim's expiry, Stopped, failing the report.
- figures: one slice's GROUP BY queries, and the merge of the slices' figures.
- sweeps: re-send what was lost, finish what the chord left, fail what was started too often.
- cancelling: cancel a pending or running report; its slices stop, it keeps no files.
- files: the CSV and the chart, written to storage.
- emails: "your report is ready", through the notifications outbox.

Revenue counts completed orders only, by the date they were placed in TIME_ZONE.
"""
