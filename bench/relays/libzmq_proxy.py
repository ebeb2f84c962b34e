"""Reference for the relay benchmark: the same pass-through as passthrough.cjs, but with libzmq's
own zmq_proxy in C (one thread per channel), so no interpreter touches a message. What it costs
is the price of one more hop (TCP in, ipc or TCP out) on this machine.

    python bench/relays/libzmq_proxy.py FRONT.json BACK.json     (touches FRONT.json.ready when up)
"""

import json
import sys
import threading
from pathlib import Path

import zmq


def endpoint(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


def main() -> None:
    front, back = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    context = zmq.Context()
    pairs = [(zmq.ROUTER, zmq.DEALER, c) for c in ("shell", "control", "stdin")]
    pairs.append((zmq.XPUB, zmq.XSUB, "iopub"))
    ready = []
    for front_type, back_type, channel in pairs:
        outer = context.socket(front_type)
        outer.bind(endpoint(front, channel))
        inner = context.socket(back_type)
        inner.connect(endpoint(back, channel))
        ready.append(threading.Thread(target=zmq.proxy, args=(outer, inner), daemon=True))
    heartbeat = context.socket(zmq.REP)
    heartbeat.bind(endpoint(front, "hb"))

    def echo() -> None:
        while True:
            heartbeat.send(heartbeat.recv())

    ready.append(threading.Thread(target=echo, daemon=True))
    for thread in ready:
        thread.start()
    Path(sys.argv[1] + ".ready").touch()
    threading.Event().wait()


if __name__ == "__main__":
    main()
