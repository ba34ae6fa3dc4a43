"""The real ThingsBoard device SDK (PyPI tb-mqtt-client), unmodified, against Updraft's
embedded broker: provision over MQTT, connect with the token, send telemetry, and run the
SDK's own firmware update (attribute request, chunked download, checksum, state reports).

Usage: tb_device.py HOST PORT PROVISION_KEY PROVISION_SECRET MAC WORKDIR
Prints one JSON line: {"token", "fw_title", "fw_version", "size", "state"}, and after
`FAILED` also "after_failed": {"state", "offered"}: the SDK asks for the firmware attributes
again at once after a failure; two attribute requests of our own, answered in order after
that one, show what the server answered it ("offered": a `fw_version` in the answer) and the
SDK's state once it has handled it (`DOWNLOADING` again if the server offered the build).
"""
import json
import os
import sys
import threading
import time

from tb_device_mqtt import TBDeviceMqttClient

host, port, key, secret, mac, workdir = sys.argv[1:7]
port = int(port)
os.chdir(workdir)

credentials = TBDeviceMqttClient.provision(host, key, secret, port=port, device_name=mac)
if not credentials:
    print(json.dumps({"error": "provisioning failed"}))
    sys.exit(1)
token = credentials if isinstance(credentials, str) else credentials.get("credentialsValue", credentials)

client = TBDeviceMqttClient(host, port=port, username=token, chunk_size=int(os.environ.get("TB_CHUNK_SIZE", "0")))
client.connect()
client.send_telemetry({"temperature": 21.5})
client.send_attributes({"sdk": "tb-mqtt-client"})
client.get_firmware_update()

deadline = time.time() + 60
state = None
while time.time() < deadline:
    state = client.current_firmware_info.get("fw_state")
    if state in ("UPDATED", "FAILED"):
        break
    time.sleep(0.2)
after_failed = None
if state == "FAILED":
    offered = None
    for _ in range(2):
        answered = threading.Event()
        answer = {}

        def on_attributes(content, error, answer=answer, answered=answered):
            answer["content"] = content
            answered.set()

        client.request_attributes(shared_keys=["fw_title", "fw_version", "fw_size"], callback=on_attributes)
        if not answered.wait(30):
            print(json.dumps({"error": "no answer to an attribute request"}))
            sys.exit(1)
        offered = "fw_version" in (answer.get("content") or {}).get("shared", {})
    after_failed = {"state": client.current_firmware_info.get("fw_state"), "offered": offered}
time.sleep(1.5)  # let the last state report leave
info = dict(client.current_firmware_info)
title = info.get("current_fw_title")
size = os.path.getsize(title) if title and os.path.exists(title) else None
result = {"token": token, "fw_title": title, "fw_version": info.get("current_fw_version"), "size": size, "state": state}
if after_failed is not None:
    result["after_failed"] = after_failed
print(json.dumps(result))
client.disconnect()
