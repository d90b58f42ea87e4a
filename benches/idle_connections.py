#!/usr/bin/env python3
"""Opens one idle MQTT 3.1.1 session per device of an add-bulk file.

usage: idle_connections.py HOST PORT FLEET.json
Each socket sends CONNECT (client id = device id, password = its connect
token, keep-alive 300 s) and waits for CONNACK. Prints "ready N" once all are
connected, then holds them until it is killed.
"""
import json
import socket
import struct
import sys
import time


def utf8(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def remaining_length(n):
    out = b""
    while True:
        byte, n = n % 128, n // 128
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def connect_packet(client_id, user, password):
    var = utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 300)
    body = var + utf8(client_id) + utf8(user) + utf8(password)
    return bytes([0x10]) + remaining_length(len(body)) + body


def main():
    host, port, fleet = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    devices = json.load(open(fleet))["devices"]
    socks = []
    for d in devices:
        s = socket.create_connection((host, port))
        s.sendall(connect_packet(d["device_id"], d["device_id"], d["mqtt_password"]))
        ack = s.recv(4)
        if len(ack) != 4 or ack[0] != 0x20 or ack[3] != 0:
            sys.exit(f"CONNECT of {d['device_id']} refused: {ack!r}")
        socks.append(s)
    print(f"ready {len(socks)}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
