"""A post_run_cell hook prints every cell's source into that cell's output: in the feedback, the test cells would
show their hidden tests (whatever the feedback does with the test's own source).

where: added first
stock: 0
effect: leak
"""
def _print_source(result):
    print(result.info.raw_cell)


get_ipython().events.register("post_run_cell", _print_source)
