"""The locust scenarios of ``loadtest/locustfile.py`` (which locust loads and which names the user classes), by
job: ``config`` (what a run is told through the environment), ``admin`` (the operator's calls and the user tokens
the set-up makes), ``plan`` (what the set-up makes: the shared activities and each process's part), ``outcomes``
(answers judged and counted), ``hooks`` (locust's events: set-up at test start, counts to the master, the summary
at the end), and the user classes: ``claims`` (the flash-sale rush, the livestream drops), ``checkout`` (the
order flow) and ``codes`` (code redemption)."""
