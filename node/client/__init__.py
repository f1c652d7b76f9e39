"""What library users read: `AsyncClient` (async_client.py), its blocking twin
`Client` (blocking.py, watchdog.py), the retry rules both follow (retry.py),
why a cluster cannot be reached (reach.py), asking every node at once
(fanout.py) and what they return (answer.py). Import them from `node`.
"""
