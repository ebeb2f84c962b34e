"""Saves each object with dill in one process (`dill_probe.py save FOLDER`), loads it in a fresh
one (`dill_probe.py load FOLDER`); prints one JSON line: object -> verdict."""

import json
import os
import socket
import sqlite3
import sys
import threading
import time

import dill

phase, folder = sys.argv[1], sys.argv[2]
ticks = [0]


def counter():
    i = 0
    while True:
        yield i
        i += 1


def work():
    while True:
        ticks[0] += 1
        time.sleep(0.01)


def make(name):
    if name == "generator mid-iteration":
        g = counter()
        next(g)
        next(g)
        return g
    if name == "lambda":
        return lambda x: x + 1
    if name == "open file (read to position 4)":
        path = os.path.join(folder, "f.txt")
        with open(path, "w") as f:
            f.write("0123456789")
        f = open(path)  # left open: the open file is the object under test
        f.read(4)
        return f
    if name == "running thread":
        t = threading.Thread(target=work, daemon=True)
        t.start()
        return t
    if name == "in-memory sqlite3 database":
        c = sqlite3.connect(":memory:")
        c.execute("create table t(x)")
        c.execute("insert into t values (1)")
        return c
    if name == "listening TCP socket":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s
    if name == "held threading.Lock":
        lock = threading.Lock()
        lock.acquire()
        return lock


def check(name, obj):
    if name == "generator mid-iteration":
        return next(obj) == 2
    if name == "lambda":
        return obj(1) == 2
    if name == "open file (read to position 4)":
        return obj.tell() == 4 or f"position {obj.tell()} instead of 4"
    if name == "running thread":
        before = ticks[0]
        time.sleep(0.1)
        return (obj.is_alive() and ticks[0] > before) or "nothing runs"
    if name == "in-memory sqlite3 database":
        return obj.execute("select count(*) from t").fetchone()[0] == 1
    if name == "listening TCP socket":
        return obj.getsockname()[1] != 0
    if name == "held threading.Lock":
        return obj.locked() or "unlocked"


NAMES = [
    "generator mid-iteration",
    "lambda",
    "open file (read to position 4)",
    "running thread",
    "in-memory sqlite3 database",
    "listening TCP socket",
    "held threading.Lock",
]
results = {}
for i, name in enumerate(NAMES):
    blob = os.path.join(folder, f"{i}.pkl")
    if phase == "save":
        try:
            with open(blob, "wb") as f:
                dill.dump(make(name), f)
            results[name] = "saved"
        except Exception as error:
            os.unlink(blob)
            results[name] = f"fails to save: {type(error).__name__}: {str(error)[:100]}"
        continue
    if not os.path.exists(blob):
        continue
    try:
        with open(blob, "rb") as f:
            obj = dill.load(f)
    except Exception as error:
        results[name] = f"saves, fails to load: {type(error).__name__}: {str(error)[:100]}"
        continue
    try:
        verdict = check(name, obj)
    except Exception as error:
        verdict = f"{type(error).__name__}: {str(error)[:100]}"
    if verdict is True:
        results[name] = "ok"
    else:
        results[name] = f"loads, but: {verdict}" if verdict else "loads, but state lost"
if phase == "save":
    # All of them at once in __main__, as in a notebook: one bad object loses the whole session.
    for i, name in enumerate(NAMES):
        globals()[f"obj{i}"] = make(name)
    try:
        dill.dump_session(os.path.join(folder, "session.pkl"))
        results["dump_session of all of them together"] = "saved"
    except Exception as error:
        results["dump_session of all of them together"] = (
            f"fails, nothing saved: {type(error).__name__}: {str(error)[:100]}"
        )
print(json.dumps(results))
