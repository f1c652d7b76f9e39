"""What library users read: `AsyncClient` (async_client.py), its blocking twin
`Client` (blocking.py, watchdog.py), the retry rules both follow (retry.py)
and what they return (answer.py). Import them from `node`.
"""
