"""The real ThingsBoard device SDK (PyPI tb-mqtt-client), unmodified: connects with a device
token, follows shared attribute updates and answers server-side RPCs, as a ThingsBoard
device application does.

Usage: tb_attributes_rpc.py HOST PORT TOKEN SECONDS
Prints one JSON line per event, flushed: {"ready": true} once subscribed, then
{"attributes": {...}} for each shared attribute update and {"rpc": {"id", "method", "params"}}
for each request, which it answers with {"echo": params, "method": method}.
"""
import json
import sys
import time

from tb_device_mqtt import TBDeviceMqttClient

host, port, token, seconds = sys.argv[1:5]


def say(value):
    print(json.dumps(value), flush=True)


client = TBDeviceMqttClient(host, port=int(port), username=token)


def on_attributes(content, exception):
    say({"attributes": content})


def on_rpc(request_id, request):
    say({"rpc": {"id": request_id, "method": request.get("method"), "params": request.get("params")}})
    client.send_rpc_reply(request_id, {"echo": request.get("params"), "method": request.get("method")})


client.set_server_side_rpc_request_handler(on_rpc)
client.connect()
client.subscribe_to_all_attributes(on_attributes)
time.sleep(1.0)
say({"ready": True})
deadline = time.time() + float(seconds)
while time.time() < deadline:
    time.sleep(0.1)
client.disconnect()
