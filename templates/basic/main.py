"""The smallest app, as `cerebrium init` makes it: run(prompt) answers {"my_result": prompt}.

Every public function in this file is an HTTP endpoint.
"""


def run(prompt: str, run_id):
    print(f"Received the prompt {prompt} in run {run_id}")
    return {"my_result": prompt}
