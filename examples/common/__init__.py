"""What both framework examples share: settings from the environment and the upstream model.

Copying an example into your own project? Copy this package along with it.
"""
