"""The language registry: data checks against the benchmark lists, and resolution rules."""

import csv
import pickle
import re
from importlib import resources

import pytest

from kakugo_stages.languages import (
    TASKS,
    AmbiguousLanguageError,
    Language,
    LanguageError,
    UnknownLanguageError,
    all_languages,
    normalize,
    resolve,
    search,
)
from kakugo_stages.languages.registry import COLUMNS


def _code_set(text: str) -> set[str]:
    """The whitespace-separated codes of a block of text."""
    return set(re.findall(r"\S+", text))


# The 204 FLORES-200 variants, as the facebook/flores dataset names its configs (the lists
# in lm-evaluation-harness's flores task generators; the FLORES-200 README writes sat_Beng
# for Santali, whose text is in Ol Chiki: sat_Olck).
FLORES200 = _code_set(
    """
    ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn als_Latn amh_Ethi
    apc_Arab arb_Arab arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn
    azb_Arab azj_Latn bak_Cyrl bam_Latn ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab
    bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl cat_Latn ceb_Latn ces_Latn cjk_Latn ckb_Arab
    crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn dzo_Tibt ell_Grek eng_Latn epo_Latn
    est_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fin_Latn fon_Latn fra_Latn fur_Latn fuv_Latn
    gaz_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva
    hne_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn
    jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor kaz_Cyrl kbp_Latn
    kea_Latn khk_Cyrl khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn kmr_Latn knc_Arab knc_Latn
    kon_Latn kor_Hang lao_Laoo lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn
    lua_Latn lug_Latn luo_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Arab
    min_Latn mkd_Cyrl mlt_Latn mni_Beng mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn nob_Latn
    npi_Deva nso_Latn nus_Latn nya_Latn oci_Latn ory_Orya pag_Latn pan_Guru pap_Latn pbt_Arab
    pes_Arab plt_Latn pol_Latn por_Latn prs_Arab quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn
    san_Deva sat_Olck scn_Latn shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn sna_Latn snd_Arab
    som_Latn sot_Latn spa_Latn srd_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn szl_Latn
    tam_Taml taq_Latn taq_Tfng tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tpi_Latn
    tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn
    urd_Arab uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant
    zho_Hans zho_Hant zsm_Latn zul_Latn
    """
)

# The 122 Belebele variants (lm-evaluation-harness ships one belebele_<code> task each).
BELEBELE = _code_set(
    """
    acm_Arab afr_Latn als_Latn amh_Ethi apc_Arab arb_Arab arb_Latn ars_Arab ary_Arab arz_Arab
    asm_Beng azj_Latn bam_Latn ben_Beng ben_Latn bod_Tibt bul_Cyrl cat_Latn ceb_Latn ces_Latn
    ckb_Arab dan_Latn deu_Latn ell_Grek eng_Latn est_Latn eus_Latn fin_Latn fra_Latn fuv_Latn
    gaz_Latn grn_Latn guj_Gujr hat_Latn hau_Latn heb_Hebr hin_Deva hin_Latn hrv_Latn hun_Latn
    hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn jav_Latn jpn_Jpan kac_Latn kan_Knda
    kat_Geor kaz_Cyrl kea_Latn khk_Cyrl khm_Khmr kin_Latn kir_Cyrl kor_Hang lao_Laoo lin_Latn
    lit_Latn lug_Latn luo_Latn lvs_Latn mal_Mlym mar_Deva mkd_Cyrl mlt_Latn mri_Latn mya_Mymr
    nld_Latn nob_Latn npi_Deva npi_Latn nso_Latn nya_Latn ory_Orya pan_Guru pbt_Arab pes_Arab
    plt_Latn pol_Latn por_Latn ron_Latn rus_Cyrl shn_Mymr sin_Latn sin_Sinh slk_Latn slv_Latn
    sna_Latn snd_Arab som_Latn sot_Latn spa_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn
    tam_Taml tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tsn_Latn tso_Latn tur_Latn ukr_Cyrl
    urd_Arab urd_Latn uzn_Latn vie_Latn war_Latn wol_Latn xho_Latn yor_Latn zho_Hans zho_Hant
    zsm_Latn zul_Latn
    """
)

# The 42 Global-MMLU configs and the row each belongs to.
GLOBAL_MMLU = {
    "am": "amh_Ethi", "ar": "arb_Arab", "bn": "ben_Beng", "cs": "ces_Latn", "de": "deu_Latn",
    "el": "ell_Grek", "en": "eng_Latn", "es": "spa_Latn", "fa": "pes_Arab", "fil": "tgl_Latn",
    "fr": "fra_Latn", "ha": "hau_Latn", "he": "heb_Hebr", "hi": "hin_Deva", "id": "ind_Latn",
    "ig": "ibo_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "ky": "kir_Cyrl",
    "lt": "lit_Latn", "mg": "plt_Latn", "ms": "zsm_Latn", "ne": "npi_Deva", "nl": "nld_Latn",
    "ny": "nya_Latn", "pl": "pol_Latn", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
    "si": "sin_Sinh", "sn": "sna_Latn", "so": "som_Latn", "sr": "srp_Cyrl", "sv": "swe_Latn",
    "sw": "swh_Latn", "te": "tel_Telu", "tr": "tur_Latn", "uk": "ukr_Cyrl", "vi": "vie_Latn",
    "yo": "yor_Latn", "zh": "zho_Hans",
}  # fmt: skip

# The Kakugo paper's 54 languages: the code the paper uses -> (row, an English name).
PAPER = {
    "am": ("amh_Ethi", "Amharic"),
    "arz": ("arz_Arab", "Egyptian Arabic"),
    "ars": ("ars_Arab", "Najdi Arabic"),
    "as": ("asm_Beng", "Assamese"),
    "ast": ("ast_Latn", "Asturian"),
    "az": ("azj_Latn", "Azerbaijani"),
    "ba": ("bak_Cyrl", "Bashkir"),
    "bn": ("ben_Beng", "Bengali"),
    "bo": ("bod_Tibt", "Tibetan"),
    "ceb": ("ceb_Latn", "Cebuano"),
    "cv": ("chv_Cyrl", "Chuvash"),
    "cy": ("cym_Latn", "Welsh"),
    "fo": ("fao_Latn", "Faroese"),
    "ga": ("gle_Latn", "Irish"),
    "gd": ("gla_Latn", "Scottish Gaelic"),
    "gl": ("glg_Latn", "Galician"),
    "gn": ("grn_Latn", "Guarani"),
    "ha": ("hau_Latn", "Hausa"),
    "ht": ("hat_Latn", "Haitian Creole"),
    "ig": ("ibo_Latn", "Igbo"),
    "jv": ("jav_Latn", "Javanese"),
    "kmr": ("kmr_Latn", "Kurmanji"),
    "sdh": ("sdh_Arab", "Southern Kurdish"),
    "ky": ("kir_Cyrl", "Kyrgyz"),
    "lb": ("ltz_Latn", "Luxembourgish"),
    "lo": ("lao_Laoo", "Lao"),
    "lus": ("lus_Latn", "Mizo"),
    "mg": ("plt_Latn", "Malagasy"),
    "mi": ("mri_Latn", "Maori"),
    "mn": ("khk_Cyrl", "Mongolian"),
    "mt": ("mlt_Latn", "Maltese"),
    "ny": ("nya_Latn", "Chichewa"),
    "oc": ("oci_Latn", "Occitan"),
    "pap": ("pap_Latn", "Papiamento"),
    "ps": ("pbt_Arab", "Pashto"),
    "rn": ("run_Latn", "Kirundi"),
    "rw": ("kin_Latn", "Kinyarwanda"),
    "sd": ("snd_Arab", "Sindhi"),
    "si": ("sin_Sinh", "Sinhala"),
    "sm": ("smo_Latn", "Samoan"),
    "sn": ("sna_Latn", "Shona"),
    "st": ("sot_Latn", "Sesotho"),
    "su": ("sun_Latn", "Sundanese"),
    "sw": ("swh_Latn", "Swahili"),
    "te": ("tel_Telu", "Telugu"),
    "tg": ("tgk_Cyrl", "Tajik"),
    "ti": ("tir_Ethi", "Tigrinya"),
    "tk": ("tuk_Latn", "Turkmen"),
    "tt": ("tat_Cyrl", "Tatar"),
    "ug": ("uig_Arab", "Uyghur"),
    "xh": ("xho_Latn", "Xhosa"),
    "yi": ("ydd_Hebr", "Yiddish"),
    "yo": ("yor_Latn", "Yoruba"),
    "zu": ("zul_Latn", "Zulu"),
}

# Normalized names/aliases that deliberately belong to several rows: resolving one of them
# is ambiguous and the error lists the rows (there is no default among them).
SHARED_NAMES = {
    "acehnese": {"ace_Arab", "ace_Latn"},
    "achinese": {"ace_Arab", "ace_Latn"},
    "bahsa aceh": {"ace_Arab", "ace_Latn"},
    "banjar": {"bjn_Arab", "bjn_Latn"},
    "banjarese": {"bjn_Arab", "bjn_Latn"},
    "kashmiri": {"kas_Arab", "kas_Deva"},
    "koshur": {"kas_Arab", "kas_Deva"},
    "kanuri": {"knc_Arab", "knc_Latn"},
    "central kanuri": {"knc_Arab", "knc_Latn"},
    "minangkabau": {"min_Arab", "min_Latn"},
    "minang": {"min_Arab", "min_Latn"},
    "tamasheq": {"taq_Latn", "taq_Tfng"},
    "tamajaq": {"taq_Latn", "taq_Tfng"},
    "kurdish": {"ckb_Arab", "kmr_Latn", "sdh_Arab"},
}

# Languages FLORES-200 ships in two equal scripts: their shared codes stay ambiguous.
NO_DEFAULT = {"ace", "bjn", "kas", "knc", "min", "taq"}
# Groups of script variants where one row is the default.
DEFAULTS = {
    "zho": "zho_Hans",
    "arb": "arb_Arab",
    "ben": "ben_Beng",
    "hin": "hin_Deva",
    "npi": "npi_Deva",
    "sin": "sin_Sinh",
    "urd": "urd_Arab",
}


def by_code() -> dict[str, Language]:
    return {lang.code: lang for lang in all_languages()}


# ----------------------------------------------------------------------------- the data


def test_tsv_shape() -> None:
    text = resources.files("kakugo_stages.languages").joinpath("languages.tsv").read_text("utf-8")
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    assert tuple(rows[0]) == COLUMNS
    for number, row in enumerate(rows[1:], start=2):
        assert len(row) == len(COLUMNS), f"line {number}: {row}"
        assert all(cell == cell.strip() for cell in row), f"line {number}: stray whitespace"
    codes = [row[0] for row in rows[1:]]
    assert codes == sorted(codes), "keep the table sorted by flores_code"


def test_codes_unique_and_well_formed() -> None:
    langs = all_languages()
    codes = [lang.code for lang in langs]
    assert len(codes) == len(set(codes))
    assert len(langs) == 212  # FLORES-200 + nqo_Nkoo + 5 romanized Belebele + chv + sdh
    for lang in langs:
        iso3, script = lang.code.split("_")
        assert lang.iso639_3 == iso3, lang
        assert lang.script == script, lang
        assert lang.name and lang.name == lang.name.strip()
        assert all(alias.strip() == alias and alias for alias in lang.aliases)
        assert lang.iso639_1 is None or re.fullmatch(r"[a-z]{2}", lang.iso639_1), lang
        assert all(re.fullmatch(r"[a-z]{2,3}(_[A-Z][a-z]{3})?", c) for c in lang.extra_codes)


def test_flores200_rows() -> None:
    rows = {lang.code for lang in all_languages() if lang.flores200}
    assert len(rows) == 204
    assert rows == FLORES200


def test_sib200_rows() -> None:
    rows = {lang.code for lang in all_languages() if lang.sib200}
    assert len(rows) == 205
    assert rows == FLORES200 | {"nqo_Nkoo"}


def test_belebele_rows() -> None:
    rows = {lang.code for lang in all_languages() if lang.belebele}
    assert len(rows) == 122
    assert rows == BELEBELE
    assert all(lang.belebele_config == lang.code for lang in all_languages() if lang.belebele)


def test_global_mmlu_rows() -> None:
    rows = {lang.global_mmlu: lang.code for lang in all_languages() if lang.global_mmlu}
    assert len(rows) == 42
    assert rows == GLOBAL_MMLU


def test_extra_rows_outside_flores() -> None:
    extra = {lang.code for lang in all_languages() if not lang.flores200}
    assert extra == {
        "chv_Cyrl", "sdh_Arab", "nqo_Nkoo",
        "ben_Latn", "hin_Latn", "npi_Latn", "sin_Latn", "urd_Latn",
    }  # fmt: skip
    langs = by_code()
    assert langs["chv_Cyrl"].iso639_1 == "cv"
    assert langs["sdh_Arab"].iso639_3 == "sdh"


def test_fineweb2_names() -> None:
    langs = by_code()
    for lang in all_languages():
        if lang.fineweb2 is not None:
            assert re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", lang.fineweb2), lang
    assert langs["eng_Latn"].fineweb2 is None  # FineWeb-2 leaves English out
    assert langs["yor_Latn"].fineweb2 == "yor_Latn"
    assert langs["pes_Arab"].fineweb2 == "fas_Arab"
    assert langs["est_Latn"].fineweb2 == "ekk_Latn"
    assert langs["tgl_Latn"].fineweb2 == "fil_Latn"
    assert langs["grn_Latn"].fineweb2 == "gug_Latn"
    assert langs["zho_Hans"].fineweb2 == "cmn_Hani"
    assert langs["yue_Hant"].fineweb2 == "yue_Hani"


def test_paper_languages_have_fineweb2_data() -> None:
    # FineWeb-2's language table has no Hausa subset (hau_Latn): the context-based prompts
    # cannot sample documents for it.
    missing = {code for code, (row, _) in PAPER.items() if by_code()[row].fineweb2 is None}
    assert missing == {"ha"}


def test_no_unexpected_shared_names() -> None:
    owners: dict[str, set[str]] = {}
    for lang in all_languages():
        for name in lang.names:
            owners.setdefault(normalize(name), set()).add(lang.code)
    shared = {key: codes for key, codes in owners.items() if len(codes) > 1}
    assert shared == SHARED_NAMES


def test_primary_names_unique() -> None:
    names = [normalize(lang.name) for lang in all_languages()]
    assert len(names) == len(set(names))


def test_shared_codes_are_script_variants() -> None:
    owners: dict[str, set[str]] = {}
    for lang in all_languages():
        for code in lang.codes[1:]:
            owners.setdefault(normalize(code), set()).add(lang.code)
    for key, codes in owners.items():
        if len(codes) == 1:
            continue
        iso3 = {code.split("_")[0] for code in codes}
        assert len(iso3) == 1, (key, codes)
        (group,) = iso3
        assert group in NO_DEFAULT or group in DEFAULTS, (key, codes)


def test_default_rows() -> None:
    defaults = {lang.iso639_3: lang.code for lang in all_languages() if lang.default}
    assert defaults == DEFAULTS
    for iso3 in NO_DEFAULT:
        variants = [lang for lang in all_languages() if lang.iso639_3 == iso3]
        assert len(variants) == 2
        assert not any(lang.default for lang in variants)


def test_names_do_not_shadow_other_rows_codes() -> None:
    code_owner: dict[str, set[str]] = {}
    for lang in all_languages():
        for code in lang.codes:
            code_owner.setdefault(normalize(code), set()).add(lang.code)
    for lang in all_languages():
        for name in lang.names:
            owners = code_owner.get(normalize(name))
            assert owners is None or lang.code in owners, (name, lang.code, owners)


def test_tasks_property() -> None:
    langs = by_code()
    assert langs["yor_Latn"].tasks == TASKS
    assert langs["chv_Cyrl"].tasks == ()
    assert langs["nqo_Nkoo"].tasks == ("sib200",)
    assert langs["hin_Latn"].tasks == ("belebele",)
    assert langs["ast_Latn"].tasks == ("flores200", "sib200")


# ------------------------------------------------------------------------------ resolve


@pytest.mark.parametrize("code", sorted(PAPER))
def test_paper_codes(code: str) -> None:
    row, name = PAPER[code]
    assert resolve(code).code == row
    assert resolve(name).code == row
    assert resolve(row).code == row


def test_paper_table_complete() -> None:
    assert len(PAPER) == 54


@pytest.mark.parametrize(
    "query",
    ["Yoruba", "yorùbá", "YORUBA", "  yoruba ", "Yor_Latn", "yor-latn", "YOR_LATN", "yo", "YO",
     "yor", "Èdè Yorùbá", "ede  yoruba", "edè-yorùbá"],
)  # fmt: skip
def test_yoruba_spellings(query: str) -> None:
    assert resolve(query).code == "yor_Latn"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("swa", "swh_Latn"),
        ("msa", "zsm_Latn"),
        ("may", "zsm_Latn"),
        ("fas", "pes_Arab"),
        ("per", "pes_Arab"),
        ("Farsi", "pes_Arab"),
        ("ara", "arb_Arab"),
        ("zho", "zho_Hans"),
        ("chi", "zho_Hans"),
        ("zh", "zho_Hans"),
        ("Chinese", "zho_Hans"),
        ("cmn_Hani", "zho_Hans"),
        ("zho_Hant", "zho_Hant"),
        ("ar", "arb_Arab"),
        ("arb", "arb_Arab"),
        ("arb_Latn", "arb_Latn"),
        ("bn", "ben_Beng"),
        ("hi", "hin_Deva"),
        ("ur", "urd_Arab"),
        ("ne", "npi_Deva"),
        ("si", "sin_Sinh"),
        ("fas_Arab", "pes_Arab"),
        ("gug_Latn", "grn_Latn"),
        ("ekk_Latn", "est_Latn"),
        ("fil", "tgl_Latn"),
        ("Filipino", "tgl_Latn"),
        ("sat_Beng", "sat_Olck"),
        ("Norwegian", "nob_Latn"),
        ("N'Ko", "nqo_Nkoo"),
        ("Nko", "nqo_Nkoo"),
        ("Luba Kasai", "lua_Latn"),
        ("Ta’izzi-Adeni Arabic", "acq_Arab"),
        ("Chinese (Traditional)", "zho_Hant"),
        ("chinese traditional", "zho_Hant"),
        ("Føroyskt", "fao_Latn"),
        ("Kurmanji", "kmr_Latn"),
        ("Sorani", "ckb_Arab"),
        ("Acehnese (Latin script)", "ace_Latn"),
        ("Русский", "rus_Cyrl"),
        ("አማርኛ", "amh_Ethi"),
    ],
)
def test_codes_and_aliases(query: str, code: str) -> None:
    assert resolve(query).code == code


def test_every_row_resolves_by_code_and_name() -> None:
    for lang in all_languages():
        assert resolve(lang.code) is lang
        assert resolve(lang.code.lower()) is lang
        assert resolve(lang.name) is lang


def test_unknown_suggests_closest() -> None:
    with pytest.raises(UnknownLanguageError) as info:
        resolve("Yorubba")
    message = str(info.value)
    assert "Yoruba (yor_Latn)" in message
    assert "kakugo languages" in message
    assert info.value.suggestions[0].code == "yor_Latn"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, LanguageError)


def test_unknown_lists_at_most_five() -> None:
    with pytest.raises(UnknownLanguageError) as info:
        resolve("arabian")
    assert 0 < len(info.value.suggestions) <= 5
    assert info.value.suggestions[0].code == "arb_Arab"
    with pytest.raises(UnknownLanguageError) as info:
        resolve("portugese")
    assert "Portuguese (por_Latn)" in str(info.value)


def test_unknown_without_suggestions() -> None:
    with pytest.raises(UnknownLanguageError) as info:
        resolve("xqzw")
    assert info.value.suggestions == ()
    assert "kakugo languages xqzw" in str(info.value)
    with pytest.raises(UnknownLanguageError) as info:
        resolve("no such language")
    assert "kakugo languages 'no such language'" in str(info.value)
    with pytest.raises(UnknownLanguageError):
        resolve("   ")


def test_ambiguous_lists_candidates() -> None:
    with pytest.raises(AmbiguousLanguageError) as info:
        resolve("ace")
    message = str(info.value)
    assert "Acehnese (Arabic script) (ace_Arab)" in message
    assert "Acehnese (Latin script) (ace_Latn)" in message
    assert "code" in message
    assert {c.code for c in info.value.candidates} == {"ace_Arab", "ace_Latn"}
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("query", "codes"), sorted(SHARED_NAMES.items()))
def test_shared_names_are_ambiguous(query: str, codes: set[str]) -> None:
    with pytest.raises(AmbiguousLanguageError) as info:
        resolve(query)
    assert {c.code for c in info.value.candidates} == codes
    for code in codes:
        assert f"({code})" in str(info.value)


@pytest.mark.parametrize("iso3", sorted(NO_DEFAULT))
def test_two_script_languages_are_ambiguous(iso3: str) -> None:
    with pytest.raises(AmbiguousLanguageError):
        resolve(iso3)


def test_errors_pickle() -> None:
    for query in ("Yorubba", "ace"):
        with pytest.raises(LanguageError) as info:
            resolve(query)
        copy = pickle.loads(pickle.dumps(info.value))
        assert type(copy) is type(info.value)
        assert str(copy) == str(info.value)


def test_resolve_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        resolve(None)  # type: ignore[arg-type]


def test_language_is_hashable_and_prints_label() -> None:
    lang = resolve("yo")
    assert {lang: 1}[resolve("Yoruba")] == 1
    assert str(lang) == "Yoruba (yor_Latn)" == lang.label


def test_all_languages_is_cached() -> None:
    assert all_languages() is all_languages()


# ------------------------------------------------------------------------------- search


def test_search_empty_lists_everything() -> None:
    everything = search("")
    assert len(everything) == len(all_languages())
    assert set(everything) == set(all_languages())
    assert len(search("", limit=3)) == 3
    assert len(search("  ", limit=10_000)) == len(all_languages())


def test_search_ranks_exact_first() -> None:
    assert search("yor")[0].code == "yor_Latn"
    assert search("Yoruba")[0].code == "yor_Latn"
    assert search("yo")[0].code == "yor_Latn"
    assert search("ar")[0].code == "arb_Arab"


def test_search_substring_and_fuzzy() -> None:
    kurdish = {lang.code for lang in search("kurd")}
    assert kurdish == {"ckb_Arab", "kmr_Latn", "sdh_Arab"}
    assert search("Yorubba")[0].code == "yor_Latn"
    assert search("swahli")[0].code == "swh_Latn"
    arabic = [lang.code for lang in search("arabic", limit=50)]
    assert arabic[0] == "arb_Arab"
    assert {"arz_Arab", "ars_Arab", "ary_Arab", "acm_Arab"} <= set(arabic)


def test_search_limit() -> None:
    assert len(search("a")) == 10
    assert len(search("a", limit=3)) == 3
    assert search("zzzzqqq") == []
