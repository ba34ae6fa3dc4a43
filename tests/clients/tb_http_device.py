"""The real ThingsBoard device SDK's HTTP client (`tb_device_http.TBHTTPDevice`, PyPI
tb-mqtt-client), unmodified, against Updraft's ThingsBoard HTTP device API
(UPDRAFT_COMPAT_THINGSBOARD_HTTP=true): connect with the token, then the SDK's own firmware
update (shared attributes, download whole or in chunks, checksum, state reports as telemetry).

Usage: tb_http_device.py BASE_URL TOKEN CHUNK_SIZE WORKDIR
Prints one JSON line: {"connected", "files": {name: size} (the SDK writes the image to
./<fw_title>), "state"} (the SDK's last state before its final `UPDATED` report, which it
sends separately).
"""
import json
import os
import sys
import time

from tb_device_http import TBHTTPDevice

base_url, token, chunk_size, workdir = sys.argv[1:5]
os.chdir(workdir)

client = TBHTTPDevice(base_url, token, chunk_size=int(chunk_size))
connected = client.connect()
client.get_firmware_update()
# The state reports go out through the SDK's publish queue: let it drain.
deadline = time.time() + 30
while time.time() < deadline and not client._TBHTTPDevice__worker["publish"]["queue"].empty():
    time.sleep(0.1)
time.sleep(1)
files = {name: os.path.getsize(name) for name in os.listdir(".")}
print(json.dumps({"connected": connected, "files": files, "state": client.current_firmware_info.get("fw_state")}))
client.stop_publish_worker()
