"""A correct answer cell that starts with %%time, to see how long it takes.

where: prepend counting_functions
answers: reference
first_line: %%time
stock: 5
"""
