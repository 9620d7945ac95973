"""Reports: the run directory and everything in it (`rundir`: results.json.gz, junit.xml, report.html,
summary.md, as results arrive), each a pure rendering of the records (`junit`, `overview` with
`report_html` and `summary_md`), and what a finished run prints (`terminal`)."""
