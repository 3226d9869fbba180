"""What crosses the gateway -> worker wire survives it whole."""

from __future__ import annotations

from inference.engine import SamplingParams
from inference.tools import auto_grammar, tool_specs
from inference.workers.protocol import pack, params_from_wire, params_to_wire, unpack

WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def test_sampling_params_with_a_lazy_grammar_cross_the_wire_unchanged():
    lazy = auto_grammar(tool_specs([WEATHER]), "auto", to_gbnf=lambda schema: 'root ::= "{}"')
    params = SamplingParams(
        max_tokens=8,
        temperature=0.5,
        stop=("\n\n",),
        grammar=lazy.grammar,
        trigger_words=lazy.trigger_words,
        trigger_patterns=lazy.trigger_patterns,
        logit_bias={7: -1.5},
    )
    assert params_from_wire(unpack(pack(params_to_wire(params)))) == params


def test_sampling_params_from_a_sender_without_triggers_are_eager():
    wire = params_to_wire(SamplingParams(max_tokens=8, grammar='root ::= "a"'))
    del wire["trigger_words"], wire["trigger_patterns"]
    params = params_from_wire(unpack(pack(wire)))
    assert params.grammar == 'root ::= "a"'
    assert (params.trigger_words, params.trigger_patterns) == ((), ())
