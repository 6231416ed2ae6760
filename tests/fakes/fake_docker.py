#!/usr/bin/env python3
"""A fake Docker engine on a unix socket, for bench/growth.py: containers without processes.

    fake_docker.py SOCKET_PATH

Prints "ready" once it listens. It answers what poolworker's Docker backend asks of an engine
(API version 1.43, any /vX.Y prefix): /_ping, /version, /info, image inspect (every image is
present), image pull (a one-line progress stream), network inspect, container create, start,
inspect, attach and logs (a stream that stays open and silent while the container runs), wait
(the head at once, the exit status when the container ends), stop and remove. A started
container "runs" until it is stopped or removed: nothing is executed, so a machine can hold
ten thousand of them. Every connection is served by one asyncio event loop.
"""

import asyncio
import datetime
import json
import re
import sys
import uuid

VERSION = {"Version": "24.0.0-fake", "ApiVersion": "1.43", "MinAPIVersion": "1.12",
           "Os": "linux", "Arch": "amd64", "KernelVersion": "6.1.0", "GoVersion": "go1.20"}

containers = {}  # id -> {"name", "config", "state", "exit", "ended": asyncio.Event}
names = {}  # name -> id


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def reply(writer, status, body=b"", content_type="application/json"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    reason = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified",
              404: "Not Found", 409: "Conflict"}.get(status, "Error")
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)


def not_found(writer, what):
    reply(writer, 404, {"message": f"No such container: {what}"})


def find(ref):
    if ref in containers:
        return ref
    if ref in names:
        return names[ref]
    matches = [cid for cid in containers if cid.startswith(ref)]
    return matches[0] if len(matches) == 1 else None


def inspect(cid):
    c = containers[cid]
    running = c["state"] == "running"
    return {"Id": cid, "Name": "/" + c["name"], "Created": c["created"],
            "Config": c["config"], "Image": "sha256:" + "0" * 64,
            "State": {"Status": c["state"], "Running": running, "Paused": False,
                      "Restarting": False, "OOMKilled": False, "Dead": False,
                      "Pid": 4242 if running else 0, "ExitCode": c["exit"] or 0, "Error": "",
                      "StartedAt": c.get("started", "0001-01-01T00:00:00Z"),
                      "FinishedAt": c.get("finished", "0001-01-01T00:00:00Z")},
            "HostConfig": c["config"].get("HostConfig", {}),
            "NetworkSettings": {"Networks": {}}}


def end(cid, code):
    c = containers[cid]
    if c["state"] != "exited":
        c["state"] = "exited"
        c["exit"] = code
        c["finished"] = now()
        c["ended"].set()


async def hold_stream(writer, cid, chunked, final=None):
    """Sends a streamed head, waits for the container's end, then ends the stream."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: " + (
        "application/json" if final else "application/vnd.docker.multiplexed-stream")
    head += "\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else "\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    await containers[cid]["ended"].wait()
    if final:
        data = json.dumps(final(cid)).encode() + b"\n"
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    if chunked:
        writer.write(b"0\r\n\r\n")


async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        body = b""
        if int(headers.get("content-length", "0")) > 0:
            body = await reader.readexactly(int(headers["content-length"]))
        path, _, query = target.partition("?")
        path = re.sub(r"^/v[0-9.]+", "", path)
        await route(method, path, query, body, reader, writer)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def route(method, path, query, body, reader, writer):
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if path == "/_ping":
        return reply(writer, 200, b"OK", "text/plain")
    if path == "/version":
        return reply(writer, 200, VERSION)
    if path == "/info":
        return reply(writer, 200, {"ID": "fake", "Containers": len(containers),
                                   "OperatingSystem": "fake", "NCPU": 2})
    if re.fullmatch(r"/images/.+/json", path):
        return reply(writer, 200, {"Id": "sha256:" + "0" * 64, "RepoTags": []})
    if path == "/images/create":
        return reply(writer, 200, b'{"status":"Downloaded newer image"}\n')
    if path.startswith("/networks/"):
        return reply(writer, 200, {"Name": path.split("/")[2], "Id": "n" * 64, "Driver": "bridge"})
    if path == "/containers/create" and method == "POST":
        name = params.get("name") or "fake_" + uuid.uuid4().hex[:12]
        if name in names:
            return reply(writer, 409, {"message": f'Conflict. The container name "/{name}" is '
                                                  "already in use by container"})
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        containers[cid] = {"name": name, "config": json.loads(body or b"{}"),
                           "state": "created", "exit": None, "created": now(),
                           "ended": asyncio.Event()}
        names[name] = cid
        return reply(writer, 201, {"Id": cid, "Warnings": []})
    match = re.fullmatch(r"/containers/([^/]+)(/[a-z]+)?", path)
    if not match:
        return reply(writer, 404, {"message": f"page not found: {path}"})
    cid = find(match.group(1))
    action = match.group(2) or ""
    if cid is None:
        return not_found(writer, match.group(1))
    c = containers[cid]
    if action == "/start":
        if c["state"] == "running":
            return reply(writer, 304)
        c["state"] = "running"
        c["started"] = now()
        return reply(writer, 204)
    if action == "/json":
        return reply(writer, 200, inspect(cid))
    if action in ("/attach", "/logs"):
        return await hold_stream(writer, cid, chunked=False)
    if action == "/wait":
        return await hold_stream(writer, cid, chunked=True,
                                 final=lambda i: {"StatusCode": containers[i]["exit"],
                                                  "Error": None})
    if action in ("/stop", "/kill"):
        end(cid, 137)
        return reply(writer, 204)
    if action == "" and method == "DELETE":
        end(cid, 137)
        del containers[cid]
        names.pop(c["name"], None)
        return reply(writer, 204)
    return reply(writer, 404, {"message": f"page not found: {path}"})


async def main():
    server = await asyncio.start_unix_server(handle, path=sys.argv[1], backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
