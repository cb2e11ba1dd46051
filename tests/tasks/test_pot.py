"""GSM8K answers -> gold programs; the programs run in the sandbox and print the gold answer."""

from __future__ import annotations

from reasonloop.tasks.base import Problem
from reasonloop.tasks.pot import POT_INSTRUCTION, gsm8k_to_program, pot_response, to_pot_problems
from reasonloop.verify.pot import pot_reward

NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
           "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
BETTY = ("In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
         "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
         "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5")


def test_natalia_program_references_the_earlier_step():
    assert gsm8k_to_program(NATALIA) == (
        "# Natalia sold 48/2 = 24 clips in May.\nstep_1 = 48/2\n"
        "# Natalia sold 48+24 = 72 clips altogether in April and May.\nstep_2 = 48+step_1\nprint(step_2)\n")


def test_betty_program_and_number_cleanup():
    program = gsm8k_to_program(BETTY)
    assert "step_3 = 100-step_1-step_2-15\nprint(step_3)\n" in program
    # thousands commas, "x" for times, leading zeros
    assert "step_1 = 1000*3" in gsm8k_to_program("It costs <<1,000x3=3000>>3000.\n#### 3000")
    assert "step_1 = 5+2" in gsm8k_to_program("<<05+2=7>>7\n#### 7")


def test_prints_the_step_holding_the_answer_not_a_later_one():
    text = "He has <<3*4=12>>12. Then <<12+1=13>>13 with the dog. So 12.\n#### 12"
    assert gsm8k_to_program(text).endswith("step_2 = step_1+1\nprint(step_1)\n")


def test_unconvertible_answers_give_none():
    assert gsm8k_to_program("No calculation here.\n#### 4") is None
    assert gsm8k_to_program("Compute <<a*b=6>>6\n#### 6") is None
    assert gsm8k_to_program("<<2+2=4>>4 but no final line") is None


def test_gold_programs_earn_full_reward_in_the_sandbox():
    problems = [Problem(id=str(i), question="q", answer=a.rpartition("#### ")[2], reasoning=a.rpartition("####")[0])
                for i, a in enumerate((NATALIA, BETTY))]
    pot = to_pot_problems(problems + [Problem(id="x", question="q", answer="4", reasoning="no math")])
    assert [p.id for p in pot] == ["0", "1"]
    assert pot[0].reasoning == pot_response(gsm8k_to_program(NATALIA))
    assert pot[0].reasoning.startswith("```python\n# Natalia")
    assert pot_reward([p.reasoning for p in pot], pot) == [1.0, 1.0]
    assert "```python" in POT_INSTRUCTION
