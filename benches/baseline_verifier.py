#!/usr/bin/python3
"""The baseline most teams run today: Mosquitto plus this small subscriber.

It subscribes to sealed/# on the broker, checks each message's HMAC
(SEALED-ENVELOPE-v1, JSON envelope only), refuses a nonce that is not above
the last one it accepted from that device (kept in memory), decrypts AES
bodies, and republishes the plaintext on clean/{device}[/{stream}] at QoS 1.
Written plainly, as such a team would: one process, paho-mqtt's network
loop, no batching, nothing persisted.

usage:
  baseline_verifier.py --fleet FLEET.json [--host H] [--port P]
      FLEET.json as written by `sealgate device add-bulk --out`. Prints
      "ready" on stdout once subscribed; on SIGTERM prints its counts as one
      JSON line on stdout and exits.
  baseline_verifier.py --self-test VECTORS.json
      Checks the verifier against the spec's vectors (tests/vectors/vectors.json):
      every JSON vector must get the expected verdict and clean output.

Needs Debian's python3-paho-mqtt (1.6) and python3-cryptography; run it with
/usr/bin/python3.
"""
import argparse
import base64
import binascii
import hashlib
import hmac
import json
import re
import signal
import struct
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ID_RE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$")
HEX_MAC_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class Reject(Exception):
    """A message the verifier refuses; the argument is the spec's reason."""


def hmac256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def device_keys(secret):
    """K_mac and K_enc from the device secret S (spec section 3)."""
    return hmac256(secret, b"sealgate/v1/mac"), hmac256(secret, b"sealgate/v1/enc")[:16]


class Verifier:
    def __init__(self, devices, sealed="sealed", clean="clean"):
        # devices: {device_id: {kid: (k_mac, k_enc)}}
        self.devices = devices
        self.sealed = sealed
        self.clean = clean
        self.last_nonce = {}

    def check(self, topic, payload):
        """Returns (clean topic, plaintext) or raises Reject(reason)."""
        parts = topic.split("/", 2)
        if len(parts) < 2 or parts[0] != self.sealed:
            raise Reject("malformed")
        device_id = parts[1].strip(" \t\r\n").lower()
        stream = parts[2] if len(parts) > 2 else ""
        if not ID_RE.match(device_id) or len(stream.encode()) > 200:
            raise Reject("malformed")
        try:
            env = json.loads(payload)
        except ValueError:
            raise Reject("malformed")
        if not isinstance(env, dict) or env.get("v") != 1 or isinstance(env.get("v"), bool):
            raise Reject("malformed")
        kid = env.get("kid", 1)
        nonce = env.get("nonce")
        enc = env.get("enc", "none")
        for n in (kid, nonce):
            if not isinstance(n, int) or isinstance(n, bool):
                raise Reject("malformed")
        if not 1 <= nonce < 2**64 or not 0 <= kid < 2**32:
            raise Reject("malformed")
        if enc not in ("none", "aes-128-cbc"):
            raise Reject("malformed")
        mac_hex = env.get("mac")
        if not isinstance(mac_hex, str) or not HEX_MAC_RE.match(mac_hex):
            raise Reject("malformed")
        try:
            body = base64.b64decode(env.get("payload"), validate=True)
            iv = None
            if enc == "aes-128-cbc":
                iv = base64.b64decode(env.get("iv"), validate=True)
                if len(iv) != 16:
                    raise Reject("malformed")
            elif "iv" in env:
                raise Reject("malformed")
        except (TypeError, binascii.Error):
            raise Reject("malformed")

        keys = self.devices.get(device_id)
        if keys is None:
            raise Reject("unknown_device")
        if kid not in keys:
            raise Reject("unknown_kid")
        k_mac, k_enc = keys[kid]
        d, st = device_id.encode(), stream.encode()
        mac_input = (b"SGv1" + bytes([len(d)]) + d + struct.pack(">H", len(st)) + st
                     + struct.pack(">IQ", kid, nonce) + bytes([1 if iv else 0])
                     + (iv or b"") + body)
        if not hmac.compare_digest(hmac256(k_mac, mac_input), bytes.fromhex(mac_hex)):
            raise Reject("bad_mac")
        if nonce <= self.last_nonce.get(device_id, 0):
            raise Reject("replay")
        if iv:
            try:
                dec = Cipher(algorithms.AES(k_enc), modes.CBC(iv)).decryptor()
                padded = dec.update(body) + dec.finalize()
                unpad = padding.PKCS7(128).unpadder()
                body = unpad.update(padded) + unpad.finalize()
            except ValueError:
                raise Reject("decrypt_failed")
        self.last_nonce[device_id] = nonce
        clean_topic = f"{self.clean}/{device_id}" + (f"/{stream}" if stream else "")
        return clean_topic, body


def load_fleet(path):
    devices = {}
    for d in json.load(open(path))["devices"]:
        devices[d["device_id"]] = {d["kid"]: device_keys(bytes.fromhex(d["secret"]))}
    return devices


def self_test(vectors_path):
    v = json.load(open(vectors_path))
    devices = {}
    for k in v["keys"]:
        devices.setdefault(k["device_id"], {})[k["kid"]] = device_keys(bytes.fromhex(k["secret_hex"]))
    failures, checked, skipped = [], 0, []
    for m in v["messages"]:
        payload = base64.b64decode(m["payload_b64"])
        if payload.startswith(b"SG\x01") and m["verdict"] == "accept":
            skipped.append(m["name"])  # the baseline speaks the JSON envelope only
            continue
        checked += 1
        try:
            topic, body = Verifier(devices).check(m["topic"], payload)
            got = "accept"
        except Reject as r:
            got, topic, body = r.args[0], None, None
        if got != m["verdict"]:
            failures.append(f"{m['name']}: expected {m['verdict']}, got {got}")
        elif got == "accept" and (topic != m["clean_topic"]
                                  or body != base64.b64decode(m["clean_body_b64"])):
            failures.append(f"{m['name']}: wrong clean output")
    # Replays: the baseline keeps only the highest nonce, so it refuses every
    # replay the spec refuses, and also a late message inside the window,
    # which the spec accepts (stricter, never weaker).
    seq = v["replay_sequence"]
    ver = Verifier(devices)
    stricter = 0
    for i, step in enumerate(seq["steps"]):
        try:
            ver.check(seq["topic"], base64.b64decode(step["payload_b64"]))
            got = "accept"
        except Reject as r:
            got = r.args[0]
        checked += 1
        if step["verdict"] != "accept" and got == "accept":
            failures.append(f"replay step {i}: expected {step['verdict']}, accepted")
        elif step["verdict"] == "accept" and got != "accept":
            if got != "replay":
                failures.append(f"replay step {i}: expected accept, got {got}")
            else:
                stricter += 1
    print(f"self-test: {checked} vectors checked, {len(failures)} failed; "
          f"skipped (binary envelope, not supported by the baseline): {', '.join(skipped) or 'none'}; "
          f"late in-window nonces refused (stricter than the spec): {stricter}")
    for f in failures:
        print(f"  FAIL {f}")
    return 1 if failures else 0


def serve(args):
    import paho.mqtt.client as mqtt

    verifier = Verifier(load_fleet(args.fleet), args.sealed, args.clean)
    counts = {"accepted": 0, "rejected": {}}
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id="baseline-verifier")
    else:
        client = mqtt.Client(client_id="baseline-verifier")

    def on_connect(c, userdata, flags, rc):
        if rc != 0:
            sys.exit(f"baseline: CONNECT refused ({rc})")
        c.subscribe(f"{args.sealed}/#", qos=1)

    def on_subscribe(c, userdata, mid, granted_qos):
        print("ready", flush=True)

    def on_message(c, userdata, msg):
        try:
            topic, body = verifier.check(msg.topic, msg.payload)
        except Reject as r:
            reason = r.args[0]
            counts["rejected"][reason] = counts["rejected"].get(reason, 0) + 1
            return
        c.publish(topic, body, qos=1)
        counts["accepted"] += 1

    def stop(signum, frame):
        print(json.dumps(counts), flush=True)
        client.disconnect()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, stop)
    client.connect(args.host, args.port, keepalive=60)
    client.loop_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fleet")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--sealed", default="sealed")
    p.add_argument("--clean", default="clean")
    p.add_argument("--self-test", metavar="VECTORS.json")
    args = p.parse_args()
    if args.self_test:
        sys.exit(self_test(args.self_test))
    if not args.fleet:
        p.error("--fleet or --self-test is required")
    serve(args)


if __name__ == "__main__":
    main()
