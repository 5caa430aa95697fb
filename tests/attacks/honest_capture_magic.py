"""A correct answer cell that starts with %%capture, keeping what it prints in a variable.

where: prepend super_answer
answers: reference
first_line: %%capture built
stock: 5
"""
