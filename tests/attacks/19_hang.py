"""The answer cell never ends.

where: answer counting_functions
stock: 0
"""
while True:
    pass
