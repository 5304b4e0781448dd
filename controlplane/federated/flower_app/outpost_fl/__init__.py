"""Entry points of Outpost's Flower App; the code lives in the installed Outpost packages."""
