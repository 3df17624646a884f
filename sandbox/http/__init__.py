"""The sandbox's HTTPS front: one port serving Entra, Dataverse, Partner Center, hosted files and the
control API, with the machinery every request passes through.

    server.py      TLS (trustme CA), werkzeug server with keep-alive, `Sandbox`, `python -m sandbox serve`
    app.py         the WSGI app: emulated cloud state, dispatch by path, bearer-token checks
    log.py         the request log (`/_control/log`)
    faults.py      fault rules (`/_control/faults`): status, Retry-After, latency, dropped connections
    throttling.py  Dataverse service protection (429 with Retry-After)
    files.py       files served without auth at `/files/{name}`
    control.py     the control API's routing table (`/_control/*`)
"""
