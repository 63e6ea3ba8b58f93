"""Analogy (the paper's EP scenario): teacher explains, student solves, then a similar question."""

import dspy


class AnalogyTeacherExplanation(dspy.Signature):
    """You are a teacher introducing a question to a student. In one paragraph, first explain
    what the question asks, then describe an approach to solving it. Do not do any specific
    calculation and do not compute the final result; do not elaborate on or change the
    question. Speak only as the teacher, never write the student's reply or several turns.
    Answer in English."""

    question: str = dspy.InputField(desc="the question to explain")
    reference: str = dspy.InputField(desc="the standard answer, for your understanding only")
    dialogue: str = dspy.InputField(desc="the conversation so far: the question")
    explanation: str = dspy.OutputField(
        desc="your one-paragraph explanation and approach, no numbers worked out"
    )


class AnalogyStudentSolution(dspy.Signature):
    """You are a diligent student. Reason through the question based on the given question,
    the teacher's information and the standard answer when one is given, without relying on
    overly hard outside knowledge. Write one paragraph that shows the detailed calculation and
    reaches a final answer aligned with the standard solution. Speak only as the student,
    never write the teacher's words or several turns. Answer in English."""

    question: str = dspy.InputField(desc="the question to solve now")
    reference: str = dspy.InputField(desc="the standard answer to this question, if known")
    dialogue: str = dspy.InputField(desc="the conversation so far")
    solution: str = dspy.OutputField(desc="your one-paragraph solution with detailed calculation")
