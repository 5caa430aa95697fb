"""set_custom_exc swallows every exception raised in the cells that follow.

where: added first
stock: 0
"""
get_ipython().set_custom_exc((BaseException,), lambda shell, etype, value, tb, tb_offset=None: None)
