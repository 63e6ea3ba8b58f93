"""Error correction (the paper's ME scenario): weak answer, teacher critique, strong revision."""

import dspy


class WeakStudentAnswer(dspy.Signature):
    """You are a rather slow elementary-school student answering your teacher's question.
    Forget everything you were told before and answer only this question. Speak as the
    student replying to the teacher: think step by step, list every step of your work with
    the calculation written out, and finish with a final answer whose calculation is complete.
    Keep it as brief as you can, stay on the question, and answer in English. Write only your
    own reply: never write the teacher's words, never simulate several turns."""

    question: str = dspy.InputField(desc="the question the teacher asked")
    dialogue: str = dspy.InputField(desc="the conversation so far: the teacher's question")
    answer: str = dspy.OutputField(desc="your step-by-step answer with a finished final result")


class TeacherCritique(dspy.Signature):
    """You are a teacher correcting a student's solution against the standard answer.
    Begin by saying either "Your solution process is incorrect." or "Your result is correct,
    but the process is incomplete.", then point at the wrong or missing steps and explain the
    right reasoning so the student can recompute. Never give the final result and never do the
    calculation for the student. Speak only as the teacher: do not restate the whole question,
    do not judge the student in advance, never write the student's reply or several turns.
    Answer in English."""

    question: str = dspy.InputField(desc="the question the student answered")
    reference: str = dspy.InputField(desc="the standard answer; do not reveal its final result")
    dialogue: str = dspy.InputField(
        desc="the conversation so far, ending with the student's answer"
    )
    critique: str = dspy.OutputField(desc="your correction: what is wrong or missing and why")


class StrongStudentRevision(dspy.Signature):
    """You are a student who admits mistakes and fixes them. Using the conversation so far,
    your teacher's guidance and the standard answer, acknowledge what was wrong and solve the
    question again on your own, step by step, reaching the correct final result. Stay strictly
    in the student's role: never write the teacher's words or several turns. Answer in English."""

    question: str = dspy.InputField(desc="the question to solve again")
    reference: str = dspy.InputField(desc="the standard answer your final result must agree with")
    dialogue: str = dspy.InputField(
        desc="the conversation so far, ending with the teacher's guidance"
    )
    revision: str = dspy.OutputField(desc="your corrected step-by-step solution and final result")
