"""Infrastructure: the control database, the MQTT client, the private Mosquitto
launcher, signing keys and the workspace settings. Imports nothing else of the control node.
"""
