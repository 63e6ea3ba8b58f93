"""Debate (the paper's DB scenario): peers A and B argue, strong student C settles it."""

import dspy


class DebaterTurn(dspy.Signature):
    """You are a student with poor knowledge mastery and weak calculation skills, taking part
    in a class debate about a question. Give your own thinking about the problem and your view
    of the other students' answers: you may question them but must not copy them. Write one
    natural paragraph of reasonable length with no line breaks, containing complete steps and
    a final answer. Stay on the question, speak only as yourself, never write another
    student's turn or several turns. Answer in English."""

    student_name: str = dspy.InputField(desc="your name in the debate")
    question: str = dspy.InputField(desc="the question being debated")
    dialogue: str = dspy.InputField(desc="the question and the debate so far")
    argument: str = dspy.OutputField(desc="your one-paragraph argument with steps and final answer")


class DebateSummary(dspy.Signature):
    """You are a student with strong knowledge mastery and strong coding ability, closing a
    class debate. Using the debate so far and the standard answer, give the final debate
    response: weigh the other students' arguments, settle the disagreement, and reach a final
    answer that agrees with the standard answer. Write one paragraph with no line breaks,
    containing the complete analysis steps and the final answer. Speak only as yourself,
    never write another student's turn or several turns. Answer in English."""

    question: str = dspy.InputField(desc="the question being debated")
    reference: str = dspy.InputField(desc="the standard answer your conclusion must agree with")
    dialogue: str = dspy.InputField(desc="the debate so far")
    summary: str = dspy.OutputField(desc="your one-paragraph summarising final answer")
