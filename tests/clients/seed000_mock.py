"""Seed 000's device mock (citon-interactive/firmware-server, tests/mock/mqtt_test_client),
as that repository's code behaves, on paho-mqtt 2.1.0: connect as firmware-server-dev,
subscribe `{mac}/firmware`, ping `{mac}/keepalive` every 5 s, and answer each image with
`flashing`, then `idle` after 2 s, then `done` after 3 s on `{mac}/flashing/status`.
The original connects to localhost:1883; host and port are arguments here.

Usage: seed000_mock.py HOST PORT USERNAME PASSWORD MAC OUT_FILE
Writes the first image received to OUT_FILE and exits after reporting `done`.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, username, password, mac, out_file = sys.argv[1:7]
done = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties=None):
    client.subscribe(f"{mac}/firmware")


def on_message(client, userdata, message):
    with open(out_file, "wb") as f:
        f.write(message.payload)
    client.publish(f"{mac}/flashing/status", "flashing")
    time.sleep(2)
    client.publish(f"{mac}/flashing/status", "idle")
    time.sleep(3)
    client.publish(f"{mac}/flashing/status", "done")
    done.set()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="firmware-server-dev")
client.username_pw_set(username, password)
client.on_connect = on_connect
client.on_message = on_message
client.connect(host, int(port))
client.loop_start()
deadline = time.time() + 60
while not done.is_set() and time.time() < deadline:
    client.publish(f"{mac}/keepalive", "ping")
    done.wait(5)
time.sleep(0.5)
client.loop_stop()
client.disconnect()
sys.exit(0 if done.is_set() else 1)
