"""Device drivers, one module per device kind (scanner, scale, printer, camera, signal).

Each kind exposes one small abstract primitive; transports are picked by the device's
connection string.
"""
