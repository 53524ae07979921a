"""A seeded generator of realistic, labelled, news-like English text (pure Python, no downloads).

Sentences are built from templates with entity slots filled from built-in lists of people,
organisations, locations and miscellaneous names (nationalities, events, products), CoNLL-2003 style:

* ``labelled_sentences(n, seed)`` -> ``[(words, bio_tags), ...]`` for training / evaluating a tagger;
* ``documents(n, seed, long_tail=True)`` -> ``[text, ...]`` with a long-tailed length distribution
  (most 1-2 sentences, some medium, a few around or beyond 512 tokens) for benchmarks;
* ``LABELS``: the 9 BIO labels, ``"O"`` first.

Entity lists are split deterministically into a ``"train"`` and a disjoint ``"test"`` part (every fifth
name goes to test), so a model trained on ``split="train"`` can be checked on names it never saw.
``split="all"`` uses every name. The same ``(n, seed, split)`` always gives the same output.
"""

from __future__ import annotations

import math
import random
import re

__all__ = ["LABELS", "ENTITY_TYPES", "labelled_sentences", "sentences", "documents", "tokenize", "detokenize"]

ENTITY_TYPES = ["PER", "ORG", "LOC", "MISC"]
LABELS = ["O"] + [f"{p}-{t}" for t in ENTITY_TYPES for p in ("B", "I")]
# -> ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

# --------------------------------------------------------------------------------------------------
# Entity lists
# --------------------------------------------------------------------------------------------------

FIRST_NAMES = """
James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan
Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Margaret Mark Sandra
Paul Ashley Steven Emily Andrew Donna Kenneth Michelle Joshua Carol Kevin Amanda Brian Melissa
George Deborah Timothy Stephanie Ronald Rebecca Edward Laura Jason Helen Jeffrey Sharon Ryan Cynthia
Jacob Kathleen Gary Amy Nicholas Angela Eric Anna Jonathan Ruth Stephen Olivia Larry Emma Justin
Catherine Hans Ingrid Klaus Petra Jürgen Sabine Pierre Isabelle François Camille Giovanni Chiara
Luca Francesca Carlos Lucía Javier Carmen Diego Sofía Miguel Ana João Beatriz Rafael Mariana Ivan
Olga Dmitri Natalia Sergei Irina Wei Mei Hiroshi Yuki Kenji Haruka Ji-woo Min-jun Rahul Priya Arjun
Ananya Mohammed Fatima Ahmed Leila Omar Aisha Kwame Amara Chinedu Ngozi Tariq Noor Lars Astrid Sven
Freya Piotr Agnieszka Tomasz Katarzyna Mehmet Elif Yusuf Zeynep Aleksandr Svetlana Oliver Charlotte
Harry Amelia Jack Isla Noah Ava Liam Mia Ethan Chloe Lucas Grace Mateo Valentina Sebastián Camila
""".split()

SURNAMES = """
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez
Wilson Anderson Taylor Thomas Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson
Walker Young Allen King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter
Phillips Evans Turner Parker Collins Edwards Stewart Morris Murphy Cook Rogers Morgan Cooper Peterson
Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Hoffmann Dubois Lefebvre Moreau Laurent
Girard Rossi Russo Ferrari Esposito Bianchi Romano Colombo Fernández González Sánchez Pérez Ramírez
Torres Silva Santos Oliveira Costa Pereira Ivanov Petrov Smirnov Volkov Popov Wang Li Zhang Liu Chen
Yang Huang Zhao Tanaka Suzuki Takahashi Watanabe Yamamoto Kim Park Choi Jung Kang Sharma Patel Singh
Gupta Kumar Reddy Khan Hussain Rahman Okafor Mensah Nwosu Adeyemi Mwangi Haddad Nasser Hassan
Andersson Johansson Nilsson Larsen Hansen Nielsen Kowalski Nowak Wiśniewski Yilmaz Kaya Demir
O'Brien O'Connor MacDonald Fitzgerald van Dijk de Jong Jansen Novak Horvat Papadopoulos Kovács
""".split()
# two-word surnames that must stay together
SURNAMES = [s for s in SURNAMES if s not in ("van", "Dijk", "de", "Jong")]
SURNAMES += ["van Dijk", "de Jong", "da Silva", "Al-Farsi"]

# Organisations: companies, banks, institutions, media, sports clubs, NGOs, parties, universities
COMPANIES = [
    "Siemens", "Volkswagen", "BMW", "Daimler", "Bayer", "BASF", "Nestlé", "Novartis", "Roche", "Unilever",
    "Shell", "BP", "TotalEnergies", "Renault", "Peugeot", "Airbus", "Boeing", "Lockheed Martin",
    "General Electric", "General Motors", "Ford", "Toyota", "Honda", "Nissan", "Sony", "Panasonic",
    "Samsung Electronics", "Hyundai", "LG", "Microsoft", "Apple", "Google", "Amazon", "Meta", "Intel",
    "Nvidia", "IBM", "Oracle", "Cisco Systems", "Tesla", "Netflix", "Walmart", "Procter & Gamble",
    "Johnson & Johnson", "Pfizer", "Merck", "AstraZeneca", "GlaxoSmithKline", "Rio Tinto", "BHP",
    "Glencore", "ArcelorMittal", "Tata Steel", "Infosys", "Reliance Industries", "Alibaba", "Tencent",
    "Huawei", "Xiaomi", "Baidu", "Gazprom", "Rosneft", "Petrobras", "Vale", "Saudi Aramco", "Ericsson",
    "Nokia", "Philips", "Heineken", "Carlsberg", "Ikea", "Maersk", "Lufthansa", "Air France-KLM",
    "British Airways", "Ryanair", "Vodafone", "Deutsche Telekom", "Orange", "Telefónica", "AT&T",
    "Verizon", "Coca-Cola", "PepsiCo", "McDonald's", "Starbucks", "Nike", "Adidas", "Puma",
    "Northwind Logistics", "Halvorsen Shipping", "Brightwater Energy", "Crestline Pharmaceuticals",
]
BANKS = [  # commercial and investment banks; central banks are in CENTRAL_BANKS
    "Deutsche Bank",
    "Commerzbank", "Goldman Sachs", "Morgan Stanley", "JPMorgan Chase", "Citigroup", "Bank of America",
    "Wells Fargo", "HSBC", "Barclays", "Lloyds Banking Group", "Royal Bank of Scotland", "BNP Paribas",
    "Société Générale", "Credit Suisse", "UBS", "Santander", "BBVA", "UniCredit", "ING", "Rabobank",
    "Nomura", "Mitsubishi UFJ Financial Group", "Standard Chartered", "Nordea", "Danske Bank", "Itaú Unibanco",
    "State Bank of India", "Industrial and Commercial Bank of China", "Macquarie Group", "BlackRock",
]
# central banks and the like, usually written with "the" ("the Bank of England")
CENTRAL_BANKS = [
    "Bank of England", "European Central Bank", "Federal Reserve", "Bank of Japan", "People's Bank of China",
    "Reserve Bank of India", "International Monetary Fund", "World Bank", "Bank of Canada", "Swiss National Bank",
    "Reserve Bank of New Zealand", "Bank of Korea", "Central Bank of Brazil", "Bank of Mexico", "Riksbank",
    "Norges Bank", "Bank for International Settlements", "European Investment Bank", "Asian Development Bank",
    "Bank of Israel",
]
INSTITUTIONS = [
    "United Nations", "European Union", "European Commission", "NATO", "World Health Organization",
    "World Trade Organization", "OPEC", "Red Cross", "Amnesty International", "Greenpeace", "UNICEF",
    "Human Rights Watch", "Medecins Sans Frontieres", "African Union", "Arab League", "ASEAN",
    "Securities and Exchange Commission", "Department of Justice", "Ministry of Defence",
    "Foreign Office", "State Department", "Pentagon", "Bundesbank", "Bundestag", "European Parliament",
    "Supreme Court", "Labour Party", "Conservative Party", "Social Democrats", "Christian Democratic Union",
    "Harvard University", "University of Oxford", "Stanford University", "Massachusetts Institute of Technology",
    "Sorbonne", "University of Tokyo", "Max Planck Institute", "London Stock Exchange",
    "New York Stock Exchange", "Nasdaq", "FIFA", "UEFA", "International Olympic Committee",
]
MEDIA = ["Reuters", "Associated Press", "Agence France-Presse", "BBC", "CNN", "Bloomberg", "Financial Times",
         "The New York Times", "Der Spiegel", "Le Monde", "Al Jazeera", "Xinhua", "Kyodo", "Nikkei"]
TEAMS = [
    "Manchester United", "Manchester City", "Liverpool", "Arsenal", "Chelsea", "Tottenham Hotspur",
    "Real Madrid", "Barcelona", "Atletico Madrid", "Bayern Munich", "Borussia Dortmund", "Juventus",
    "AC Milan", "Inter Milan", "Napoli", "Paris Saint-Germain", "Olympique Lyonnais", "Ajax", "PSV Eindhoven",
    "Benfica", "Porto", "Celtic", "Rangers", "Galatasaray", "Boca Juniors", "River Plate", "Flamengo",
    "Los Angeles Lakers", "Boston Celtics", "New York Yankees", "Chicago Bulls", "Toronto Raptors",
]

CITIES = [
    "London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Brussels", "Amsterdam", "Frankfurt", "Munich",
    "Hamburg", "Zurich", "Geneva", "Milan", "Barcelona", "Lisbon", "Dublin", "Edinburgh", "Manchester",
    "Stockholm", "Oslo", "Copenhagen", "Helsinki", "Warsaw", "Prague", "Budapest", "Athens", "Istanbul",
    "Moscow", "Kyiv", "New York", "Washington", "Los Angeles", "San Francisco", "Chicago", "Boston",
    "Houston", "Toronto", "Montreal", "Vancouver", "Mexico City", "São Paulo", "Rio de Janeiro",
    "Buenos Aires", "Santiago", "Lima", "Bogotá", "Tokyo", "Osaka", "Seoul", "Beijing", "Shanghai",
    "Hong Kong", "Singapore", "Bangkok", "Jakarta", "Manila", "Mumbai", "New Delhi", "Bangalore",
    "Karachi", "Dubai", "Riyadh", "Tehran", "Cairo", "Lagos", "Nairobi", "Johannesburg", "Cape Town",
    "Accra", "Addis Ababa", "Sydney", "Melbourne", "Auckland", "Kuala Lumpur", "Hanoi", "Tel Aviv",
    "Beirut", "Doha", "Casablanca", "Kraków", "Lyon", "Marseille", "Seville", "Porto Alegre", "Antwerp",
    "Rotterdam", "Gothenburg", "Bergen", "Tallinn", "Riga", "Vilnius", "St. Petersburg", "Abu Dhabi",
]
COUNTRIES = [
    "Germany", "France", "Britain", "United Kingdom", "Spain", "Italy", "Portugal", "Ireland", "Netherlands",
    "Belgium", "Switzerland", "Austria", "Sweden", "Norway", "Denmark", "Finland", "Poland", "Czech Republic",
    "Hungary", "Greece", "Turkey", "Russia", "Ukraine", "United States", "Canada", "Mexico", "Brazil",
    "Argentina", "Chile", "Peru", "Colombia", "Venezuela", "Japan", "China", "South Korea", "North Korea",
    "Taiwan", "India", "Pakistan", "Bangladesh", "Indonesia", "Malaysia", "Thailand", "Vietnam",
    "Philippines", "Australia", "New Zealand", "Egypt", "Nigeria", "Kenya", "Ethiopia", "Ghana",
    "South Africa", "Morocco", "Algeria", "Saudi Arabia", "Iran", "Iraq", "Israel", "Syria", "Jordan",
    "Lebanon", "Qatar", "United Arab Emirates", "Estonia", "Latvia", "Lithuania", "Romania", "Bulgaria",
    "Serbia", "Croatia", "Slovakia", "Slovenia", "Iceland", "Cuba", "Sri Lanka", "Nepal", "Kazakhstan",
]
RIVERS = ["Rhine", "Danube", "Thames", "Seine", "Elbe", "Nile", "Amazon", "Mississippi", "Yangtze", "Ganges",
          "Mekong", "Volga", "Tigris", "Euphrates", "Zambezi", "Rio Grande", "Loire", "Oder", "Po", "Niger",
          "Indus", "Yellow River", "St. Lawrence", "Shannon", "Vistula"]
SEAS = ["Mediterranean", "Baltic Sea", "North Sea", "Black Sea", "Red Sea", "Persian Gulf", "South China Sea",
        "Gulf of Mexico", "English Channel", "Strait of Hormuz", "Suez Canal", "Panama Canal", "Caspian Sea",
        "Bosphorus", "Adriatic", "Arctic Ocean", "Lake Geneva", "Lake Victoria"]
REGIONS = [
    "Alps", "Andes", "Himalayas", "Rocky Mountains", "Sahara", "Siberia", "Bavaria", "Catalonia", "Scotland",
    "Wales", "California", "Texas", "Florida", "Ontario", "Quebec", "Patagonia", "Silicon Valley",
    "Middle East", "West Africa", "Southeast Asia", "Balkans", "Scandinavia", "Crimea", "Gaza Strip",
    "West Bank", "Kashmir", "Tuscany", "Normandy", "Lower Saxony", "Yorkshire", "Lombardy", "Sicily",
    "Flanders", "Andalusia", "Hokkaido", "Punjab", "Amazon rainforest", "Outback", "New England", "Darfur",
]
GEO = RIVERS + SEAS + REGIONS

NATIONALITIES = [
    "German", "French", "British", "English", "Spanish", "Italian", "Portuguese", "Irish", "Dutch", "Belgian",
    "Swiss", "Austrian", "Swedish", "Norwegian", "Danish", "Finnish", "Polish", "Czech", "Hungarian", "Greek",
    "Turkish", "Russian", "Ukrainian", "American", "Canadian", "Mexican", "Brazilian", "Argentine",
    "Chilean", "Japanese", "Chinese", "Korean", "South Korean", "Indian", "Pakistani", "Indonesian", "Thai",
    "Vietnamese", "Australian", "Egyptian", "Nigerian", "Kenyan", "South African", "Moroccan", "Saudi",
    "Iranian", "Iraqi", "Israeli", "Palestinian", "Syrian", "Scottish", "Welsh", "Colombian", "Peruvian",
    "Croatian", "Serbian", "Romanian", "Ethiopian", "Ghanaian", "Qatari", "Emirati", "Taiwanese",
]
GROUPS = ["European", "Asian", "African", "Latin American", "Scandinavian", "Arab", "Muslim", "Christian",
          "Catholic", "Jewish", "Buddhist", "Hindu", "Protestant", "Western", "Anglo-Saxon"]
SPORT_EVENTS = [
    "World Cup", "Olympic Games", "Winter Olympics", "Tour de France", "Wimbledon", "US Open", "French Open",
    "Australian Open", "Champions League", "Europa League", "Super Bowl", "Ryder Cup", "Euro 2024",
    "Africa Cup of Nations", "Copa America", "Six Nations", "Giro d'Italia", "Monaco Grand Prix",
    "Boston Marathon", "Stanley Cup", "Davis Cup", "Rugby World Cup", "Asian Games", "Commonwealth Games",
]
OTHER_EVENTS = [
    "Davos forum", "G20 summit", "G7 summit", "COP28", "Cannes Film Festival", "Oscars", "Grammy Awards",
    "Nobel Prize", "Booker Prize", "Eurovision Song Contest", "Formula One",
    "Paris Air Show", "Frankfurt Motor Show", "Mobile World Congress", "CES", "Oktoberfest", "Ramadan",
    "Christmas", "Easter", "Lunar New Year", "Cold War", "Second World War", "Brexit", "Arab Spring",
]
EVENTS = SPORT_EVENTS + OTHER_EVENTS
PRODUCTS = [
    "iPhone", "iPad", "MacBook", "Windows", "Office 365", "Android", "Galaxy S24", "PlayStation 5", "Xbox",
    "Nintendo Switch", "Model 3", "Model Y", "Golf", "Corolla", "Prius", "Boeing 737 MAX", "A320neo",
    "Dreamliner", "ChatGPT", "Gemini", "Linux", "Kindle", "Walkman", "Big Mac", "Viagra", "Ozempic",
    "Aspirin", "Bitcoin", "Ethereum", "Harry Potter", "Star Wars", "Airbus A350", "Surface Pro",
    "Pixel 8", "Camry", "Land Cruiser", "Tamiflu", "Humira", "Lipitor", "Boeing 777X",
]
INDICES = ["Euro Stoxx 50", "FTSE 100", "Dow Jones Industrial Average", "S&P 500", "Nikkei 225", "DAX",
           "CAC 40", "Hang Seng", "Sensex", "Nasdaq Composite", "IBEX 35", "Kospi", "MSCI World", "Shanghai Composite"]
LANGUAGES = ["English", "French", "German", "Spanish", "Mandarin", "Arabic", "Russian", "Japanese", "Hindi",
             "Portuguese"]


def _split(items: list[str], split: str) -> list[str]:
    """Every fifth item (by position) is held out for ``split="test"``; ``"all"`` keeps everything."""
    if split == "all":
        return list(items)
    if split == "train":
        return [x for i, x in enumerate(items) if i % 5 != 2]
    if split == "test":
        return [x for i, x in enumerate(items) if i % 5 == 2]
    raise ValueError(f"split must be 'train', 'test' or 'all', not {split!r}")


# --------------------------------------------------------------------------------------------------
# Non-entity vocabulary and templates
# --------------------------------------------------------------------------------------------------

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
ROLES = ["chief executive", "chairman", "chief financial officer", "president", "founder", "spokesman",
         "spokeswoman", "head of research", "chief economist", "director", "managing director",
         "general counsel", "head coach", "captain", "senior analyst", "deputy governor", "secretary-general",
         "chief operating officer", "head of communications", "lead negotiator", "team manager"]
POL_ROLES = ["prime minister", "finance minister", "foreign minister", "president", "ambassador",
             "defence minister", "trade minister", "opposition leader", "interior minister", "central bank governor"]
TITLES = ["Mr.", "Ms.", "Mrs.", "Dr.", "Professor", "President", "Chancellor", "Prime Minister", "Senator",
          "General", "Judge", "Coach", "Sir", "Minister"]
SAID = ["said", "told reporters", "said in a statement", "told a news conference", "said on Twitter",
        "wrote in a letter to shareholders", "told Parliament", "said in an interview", "added", "warned",
        "confirmed", "announced", "told analysts on a conference call"]
TOPICS = ["trade tariffs", "climate policy", "energy prices", "the budget deficit", "interest rates",
          "migration", "the ceasefire", "a merger", "supply chain problems", "the pension reform",
          "digital taxes", "security cooperation", "food prices", "the new stadium", "chip exports",
          "a debt restructuring", "vaccine supplies", "the bid", "wage talks", "water rights"]
NOUNS = ["profits", "sales", "revenue", "exports", "inflation", "unemployment", "output", "demand",
         "investment", "costs", "margins", "orders", "shipments", "bookings", "earnings", "prices"]
MOVES = ["rose", "fell", "jumped", "slipped", "climbed", "dropped", "edged up", "plunged", "surged",
         "stayed flat", "recovered", "declined"]
QUARTERS = ["first", "second", "third", "fourth"]

ENTITY_SLOTS = {
    "PER": "PER", "PER2": "PER", "SURNAME": "PER", "ORG": "ORG", "ORG2": "ORG", "COMPANY": "ORG",
    "BANK": "ORG", "CBANK": "ORG", "INST": "ORG", "MEDIA": "ORG", "TEAM": "ORG", "TEAM2": "ORG",
    "LOC": "LOC", "LOC2": "LOC",
    "CITY": "LOC", "CITY2": "LOC", "COUNTRY": "LOC", "COUNTRY2": "LOC", "GEO": "LOC", "RIVER": "LOC",
    "SEA": "LOC", "REGION": "LOC", "MISC": "MISC",
    "NAT": "MISC", "NAT2": "MISC", "EVENT": "MISC", "SPORT": "MISC", "INDEX": "MISC", "GROUP": "MISC",
    "PRODUCT": "MISC", "LANG": "MISC",
}

SENTENCE_TEMPLATES = [
    "{PER}, the {ROLE} of {ORG}, said on {DAY} that {CLAUSE}.",
    "{PER}, {ROLE} at {COMPANY}, {SAID} that {CLAUSE}.",
    "In {LOC}, {CLAUSE}.",
    "Water levels on the {RIVER} near {CITY} fell to a record low, disrupting barge traffic.",
    "Tourism in {REGION} recovered strongly this summer, {ORG} said.",
    "In {CITY}, {PER} {SAID} that {CLAUSE}.",
    "{COMPANY} shares {MOVE} {PCT} to {MONEY} in {CITY} trading on {DAY}.",
    "\"{QUOTE},\" {PER} {SAID} in {CITY}.",
    "\"{QUOTE},\" said {PER}, a {ROLE} at {BANK}.",
    "{PER} of {COUNTRY} won the {SPORT} on {DAY}, finishing ahead of {PER2} ({TEAM}).",
    "The {NAT} {POLROLE}, {PER}, will visit {CITY} on {DATE} for talks on {TOPIC}.",
    "{COMPANY} said it would open a plant near {CITY}, {COUNTRY}, employing about {INT} people.",
    "{PER} scored twice as {TEAM} beat {TEAM2} {SCORE} in {CITY} on {DAY}.",
    "Floods along the {RIVER} forced {INT} people from their homes in {CITY} on {DAY}.",
    "{COMPANY} launched the {PRODUCT} in {COUNTRY} on {DATE}, priced at {MONEY}.",
    "{PER} and {PER2} met in {CITY} on {DAY} to discuss {TOPIC}.",
    "According to {ORG}, {CLAUSE}.",
    "{COUNTRY}'s economy grew {PCT} in the {QUARTER} quarter, the {INST} said.",
    "The {CBANK} kept interest rates unchanged at {PCT} on {DAY}, as expected by {INT} of {INT2} economists "
    "polled by {MEDIA}.",
    "{ORG} agreed to buy {ORG2} for {MONEY} ({MONEY2}), the companies said on {DAY}.",
    "{PER}, who joined {ORG} in {YEAR}, replaces {PER2}, who is retiring.",
    "Speaking in {LANG} at the {EVENT} in {CITY}, {PER} called for {TOPIC} to be resolved.",
    "The {EVENT} will be held in {CITY} from {DATE} to {DATE2}, organisers said.",
    "{NAT} troops crossed into {LOC} early on {DAY}, {MEDIA} reported, citing {NAT2} officials.",
    "Police in {CITY} arrested {INT} people after clashes outside the {INST} offices on {DAY}.",
    "{PER} ({COUNTRY}) beat {PER2} ({COUNTRY2}) {SET}, {SET2} in the second round.",
    "{TITLE} {SURNAME} said {ORG} had been in talks with {ORG2} since {MONTH}.",
    "{TITLE} {SURNAME} told {MEDIA} that {CLAUSE}.",
    "Shares of {COMPANY}, which makes the {PRODUCT}, {MOVE} {PCT} after the report.",
    "{ORG} fined {COMPANY} {MONEY} over {TOPIC}, a spokesman for the regulator said.",
    "Temperatures in {CITY} reached {TEMP} degrees on {DAY}, the highest since {YEAR}.",
    "The {INDEX} index {MOVE} {PCT} to {DEC} points by the close in {CITY}.",
    "{CLAUSE}, {PER} {SAID}.",
    "{CLAUSE}, according to a statement from {ORG}.",
    "{PER}, a {NAT} citizen, was released on {DAY} after {INT} days in custody in {COUNTRY}.",
    "The talks between {COUNTRY} and {COUNTRY2} collapsed on {DAY}, {MEDIA} said.",
    "{NOUN_CAP} at {COMPANY} {MOVE} {PCT} in the {QUARTER} quarter, missing forecasts.",
    "It was the {ORDINAL} time since {YEAR} that {TEAM} had reached the final of the {SPORT}.",
    "A ship carrying {INT} tonnes of grain left {CITY} for {CITY2} via the {SEA} on {DAY}.",
    "{PER} told {MEDIA} on {DAY}: \"{QUOTE}.\"",
    "The deal, which still needs approval from the {INST}, would create the largest {NOUN_ADJ} group in {LOC}.",
    "Protesters marched through {CITY} on {DAY} demanding that {PER} resign.",
    "{ORG} ({ORG2}) said net profit {MOVE} to {MONEY} from {MONEY2} a year earlier.",
    "Born in {CITY} in {YEAR}, {PER} studied at {INST} before joining {COMPANY}.",
    "On {DATE}, {CLAUSE}.",
    "{PER} will be replaced by {PER2} as {ROLE} of {TEAM} at the end of the season.",
    "Analysts at {BANK} expect {NOUN} to {VERB_INF} by {PCT} next year.",
    "The {INDEX} {MOVE} {PCT} on {DAY} as investors weighed comments from {PER} of the {CBANK}.",
    "The {CBANK} raised rates by {INT} basis points after {PER} spoke in {CITY}.",
    "Officials at the {CBANK} said {CLAUSE}.",
    "{COUNTRY} asked the {CBANK} for a {MONEY} loan, {MEDIA} reported.",
    "The {INST} said on {DAY} that {CLAUSE}.",
    "{GROUP} leaders in {CITY} condemned the attack on {DAY}.",
    "{ORG} said the {PRODUCT} accounted for {PCT} of its sales in {COUNTRY}.",
    "{PER}, {AGE}, a former {NAT} international, has signed for {TEAM} until {YEAR}.",
    "Rain delayed the start of the {SPORT} match in {CITY} by {INT} minutes.",
    "The museum in {LOC} reopened on {DAY} after a {MONEY} renovation funded by {ORG}.",
    "Prosecutors in {LOC} charged {PER} with fraud in connection with {ORG}.",
    "{ORG} will move its headquarters from {CITY} to {CITY2}, saving {MONEY} a year.",
    "{PER} and {PER2} of {ORG} will lead the {NAT} delegation to the {EVENT}.",
    "Heavy snow closed roads across {REGION} and parts of {COUNTRY} on {DAY}.",
    "{MISC} fans queued outside stores in {CITY} on {DAY}.",
    "{PER} said {CLAUSE}.",
    "{PER} said on {DAY} that {CLAUSE}.",
    "{PER} told {MEDIA} that {CLAUSE}.",
    "{PER} will visit {CITY} next week, {PRONOUN} office said.",
    "{PER} declined to comment when asked about {TOPIC}.",
    "{COMPANY} said {CLAUSE}.",
    "{PER} joined {COMPANY} from {ORG2} in {YEAR}.",
    "{NAT} officials said the {EVENT} had been a success for {COUNTRY}.",
]

CLAUSES = [
    "{NOUN} {MOVE} {PCT} in {MONTH}",
    "the company would cut {INT} jobs by the end of {YEAR}",
    "talks with {ORG} were progressing well",
    "the government would not raise taxes this year",
    "{ORG} planned to expand into {COUNTRY}",
    "the decision was final",
    "{PER} would step down as {ROLE} in {MONTH}",
    "prices in {CITY} had risen sharply over the past year",
    "there was no evidence of wrongdoing",
    "the {NAT} market remained difficult",
    "the outlook for {YEAR} was uncertain",
    "{COUNTRY} would host the {EVENT} in {YEAR}",
    "demand for the {PRODUCT} had exceeded expectations",
    "the merger with {ORG} would be completed in the {QUARTER} quarter",
    "at least {INT} people were killed in the attack",
    "{PER} had been appointed to lead the inquiry",
    "the strike at the port of {CITY} would continue",
    "the central bank was likely to cut rates again",
    "it had no plans to sell its stake in {ORG}",
    "the ceasefire in {LOC} was holding",
    "{NOUN} could {VERB_INF} in the coming months",
    "exports to {COUNTRY} fell by {MONEY} last year",
    "the new line between {CITY} and {CITY2} would open in {YEAR}",
    "the team would travel to {CITY} without {PER}",
    "the rescue effort was hampered by bad weather",
    "the report would be published on {DATE}",
]

QUOTES = [
    "We are very pleased with the result", "This is a difficult time for everyone",
    "We will not accept these terms", "The situation is under control", "Nobody expected this",
    "We have to be realistic", "I am confident we can win", "It is too early to say",
    "This is good news for {CITY}", "We have always worked closely with {ORG}",
    "The market has changed completely", "Our priority is the safety of our staff",
    "We expect growth to return next year", "There is still a lot of work to do",
]

NOUNS_CAP = [n.capitalize() for n in NOUNS]
NOUN_ADJ = ["banking", "steel", "media", "airline", "chemicals", "insurance", "telecoms", "brewing", "shipping"]
VERBS_INF = ["rise", "fall", "recover", "stabilise", "slow", "double", "weaken", "improve"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth"]

_NEWS_DATELINE = "{CITY_UP}, {DATE} ({MEDIA}) - "
_HEADLINES = [
    "{COMPANY} to cut {INT} jobs in {COUNTRY}",
    "{NAT} shares {MOVE} as {CBANK} holds rates",
    "{PER} wins {SPORT} in {CITY}",
    "{TEAM} sack coach {PER}",
    "Floods hit {CITY} as {RIVER} bursts its banks",
    "{ORG} agrees {MONEY} deal for {ORG2}",
    "UPDATE {INT}-{COMPANY} profit {MOVE} on strong {NOUN}",
]

# --------------------------------------------------------------------------------------------------
# Word tokenization (CoNLL-like: punctuation separate, 's separate, abbreviations kept)
# --------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"(?:[A-Z]\.){2,}"  # U.S., U.K.
    r"|\b[A-Z]\.(?=\s)"  # initials: John F. Kennedy
    r"|(?:Mr|Ms|Mrs|Dr|St|Jr|Sr|Inc|Ltd|Co|Corp|No)\.(?=\s)"  # common abbreviations
    r"|'s\b"  # possessive
    r"|[$€£¥]"  # currency symbols
    r"|(?<!\w)-?\d+(?:[.,:/-]\d+)*%?(?!\w)"  # numbers: 1,200  3.5  -9  3-2  2:1  5%
    r"|\w+(?:[-’&]\w+|'(?!s\b)\w+)*"  # words incl. hyphenated, O'Brien, AT&T (but Germany 's)
    r"|[^\w\s]",  # any other punctuation char
    re.UNICODE,
)


def tokenize(text: str) -> list[str]:
    """Split text into CoNLL-like words (punctuation as separate words)."""
    return _TOKEN_RE.findall(text)


_NO_SPACE_BEFORE = {",", ".", ":", ";", "!", "?", ")", "%", "'s", "]"}
_NO_SPACE_AFTER = {"(", "[", "$", "€", "£", "¥"}


def detokenize(words: list[str]) -> str:
    """Inverse-ish of :func:`tokenize` (quotes handled by alternation)."""
    out: list[str] = []
    prev = None
    open_quote = False
    for w in words:
        if w == '"':
            glue = prev is None or open_quote or prev in _NO_SPACE_AFTER
            open_quote = not open_quote
        else:
            glue = prev is None or w in _NO_SPACE_BEFORE or prev in _NO_SPACE_AFTER or (prev == '"' and open_quote)
        out.append(w if glue else " " + w)
        prev = w
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------


class _Gen:
    def __init__(self, seed: int, split: str = "train"):
        self.rng = random.Random(seed)
        s = split
        self.first = _split(FIRST_NAMES, s)
        self.sur = _split(SURNAMES, s)
        self.company = _split(COMPANIES, s)
        self.bank = _split(BANKS, s)
        self.cbank = _split(CENTRAL_BANKS, s)
        self.inst = _split(INSTITUTIONS, s)
        self.media = _split(MEDIA, s)
        self.team = _split(TEAMS, s)
        self.city = _split(CITIES, s)
        self.country = _split(COUNTRIES, s)
        self.river = _split(RIVERS, s)
        self.sea = _split(SEAS, s)
        self.region = _split(REGIONS, s)
        self.geo = self.river + self.sea + self.region
        self.nat = _split(NATIONALITIES, s)
        self.sport_event = _split(SPORT_EVENTS, s)
        self.event = self.sport_event + _split(OTHER_EVENTS, s)
        self.groups = _split(GROUPS, s)
        self.index = _split(INDICES, s)
        self.product = _split(PRODUCTS, s)
        self.lang = _split(LANGUAGES, s)

    # ---- entity fillers -------------------------------------------------------------------------
    def person(self) -> str:
        r = self.rng.random()
        first, last = self.rng.choice(self.first), self.rng.choice(self.sur)
        if r < 0.78:
            return f"{first} {last}"
        if r < 0.88:
            return f"{first} {self.rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}"
        if r < 0.95:
            return last
        return f"{first} {last}-{self.rng.choice(self.sur)}"

    def entity(self, slot: str) -> str:
        rng = self.rng
        if slot in ("PER", "PER2"):
            return self.person()
        if slot == "SURNAME":
            return rng.choice(self.sur)
        if slot in ("ORG", "ORG2"):
            pool = rng.choices([self.company, self.bank, self.inst, self.media, self.team], [5, 2, 2, 1, 1])[0]
            return rng.choice(pool)
        if slot == "COMPANY":
            return rng.choice(self.company)
        if slot == "BANK":
            return rng.choice(self.bank)
        if slot == "CBANK":
            return rng.choice(self.cbank)
        if slot == "INST":
            return rng.choice(self.inst)
        if slot == "MEDIA":
            return rng.choice(self.media)
        if slot in ("TEAM", "TEAM2"):
            return rng.choice(self.team)
        if slot in ("LOC", "LOC2"):
            pool = rng.choices([self.city, self.country, self.region], [4, 4, 2])[0]
            return rng.choice(pool)
        if slot in ("CITY", "CITY2"):
            return rng.choice(self.city)
        if slot in ("COUNTRY", "COUNTRY2"):
            return rng.choice(self.country)
        if slot == "GEO":
            return rng.choice(self.geo)
        if slot == "RIVER":
            return rng.choice(self.river)
        if slot == "SEA":
            return rng.choice(self.sea)
        if slot == "REGION":
            return rng.choice(self.region)
        if slot in ("NAT", "NAT2"):
            return rng.choice(self.nat)
        if slot == "EVENT":
            return rng.choice(self.event)
        if slot == "SPORT":
            return rng.choice(self.sport_event)
        if slot == "INDEX":
            return rng.choice(self.index)
        if slot == "GROUP":
            return rng.choice(self.groups)
        if slot == "PRODUCT":
            return rng.choice(self.product)
        if slot == "LANG":
            return rng.choice(self.lang)
        if slot == "MISC":
            pool = rng.choices([self.nat, self.groups, self.event, self.product, self.index], [4, 1, 3, 3, 1])[0]
            return rng.choice(pool)
        raise KeyError(slot)

    # ---- plain fillers ---------------------------------------------------------------------------
    def plain(self, slot: str) -> str:
        rng = self.rng
        if slot == "DAY":
            return rng.choice(DAYS)
        if slot == "MONTH":
            return rng.choice(MONTHS)
        if slot in ("DATE", "DATE2"):
            m = rng.choice(MONTHS)
            d = rng.randint(1, 28)
            return rng.choice([f"{m} {d}", f"{d} {m}", f"{m} {d}, {rng.randint(1990, 2025)}"])
        if slot == "YEAR":
            return str(rng.randint(1975, 2026))
        if slot in ("INT", "INT2"):
            k = rng.choice([1, 1, 2, 2, 3, 3, 4])
            n = rng.randint(2, 10**k)
            return f"{n:,}" if n >= 1000 and rng.random() < 0.7 else str(n)
        if slot == "PRONOUN":
            return rng.choice(["his", "her", "their"])
        if slot == "TEMP":
            return str(rng.randint(-25, 46))
        if slot == "AGE":
            return str(rng.randint(18, 39))
        if slot == "DEC":
            return f"{rng.uniform(1000, 40000):,.2f}"
        if slot == "PCT":
            v = rng.choice([f"{rng.uniform(0.1, 9.9):.1f}", str(rng.randint(1, 40))])
            return v + (" percent" if rng.random() < 0.5 else "%")
        if slot in ("MONEY", "MONEY2"):
            cur = rng.choice(["$", "€", "£", "", ""])
            amt = rng.choice([f"{rng.uniform(1, 99):.1f}", str(rng.randint(2, 900))])
            unit = rng.choice(["million", "billion", "million", "", "mln"])
            if not cur:
                cur_word = rng.choice(["dollars", "euros", "yen", "pounds", "Swiss francs"])
                return f"{amt} {unit + ' ' if unit else ''}{cur_word}"
            return f"{cur}{amt}{' ' + unit if unit else ''}"
        if slot == "SCORE":
            return f"{rng.randint(0, 5)}-{rng.randint(0, 4)}"
        if slot in ("SET", "SET2"):
            a = rng.choice([6, 7])
            return f"{a}-{rng.randint(0, 5) if a == 6 else rng.choice([5, 6])}"
        if slot == "ROLE":
            return rng.choice(ROLES)
        if slot == "POLROLE":
            return rng.choice(POL_ROLES)
        if slot == "TITLE":
            return rng.choice(TITLES)
        if slot == "SAID":
            return rng.choice(SAID)
        if slot == "TOPIC":
            return rng.choice(TOPICS)
        if slot == "NOUN":
            return rng.choice(NOUNS)
        if slot == "NOUN_CAP":
            return rng.choice(NOUNS_CAP)
        if slot == "NOUN_ADJ":
            return rng.choice(NOUN_ADJ)
        if slot == "MOVE":
            return rng.choice(MOVES)
        if slot == "QUARTER":
            return rng.choice(QUARTERS)
        if slot == "VERB_INF":
            return rng.choice(VERBS_INF)
        if slot == "ORDINAL":
            return rng.choice(ORDINALS)
        if slot == "CLAUSE":
            return rng.choice(CLAUSES)  # expanded recursively
        if slot == "QUOTE":
            return rng.choice(QUOTES)
        raise KeyError(slot)

    # ---- expansion into (text, type|None) segments ----------------------------------------------
    _SLOT_RE = re.compile(r"\{([A-Z_0-9]+)\}")

    def expand(self, template: str, depth: int = 0) -> list[tuple[str, str | None]]:
        segs: list[tuple[str, str | None]] = []
        pos = 0
        for m in self._SLOT_RE.finditer(template):
            if m.start() > pos:
                segs.append((template[pos : m.start()], None))
            slot = m.group(1)
            if slot == "CITY_UP":
                segs.append((self.entity("CITY").upper(), "LOC"))
            elif slot in ENTITY_SLOTS:
                segs.append((self.entity(slot), ENTITY_SLOTS[slot]))
            else:
                filler = self.plain(slot)
                if "{" in filler and depth < 3:
                    segs.extend(self.expand(filler, depth + 1))
                else:
                    segs.append((filler, None))
            pos = m.end()
        if pos < len(template):
            segs.append((template[pos:], None))
        return segs

    def sentence_segments(self) -> list[tuple[str, str | None]]:
        segs = self.expand(self.rng.choice(SENTENCE_TEMPLATES))
        # capitalise the first letter of a sentence that starts with a lowercase clause
        if segs and segs[0][1] is None and segs[0][0][:1].islower():
            segs[0] = (segs[0][0][:1].upper() + segs[0][0][1:], None)
        return segs

    def headline_segments(self) -> list[tuple[str, str | None]]:
        return self.expand(self.rng.choice(_HEADLINES))


def _segments_to_words(segs: list[tuple[str, str | None]]) -> tuple[list[str], list[str]]:
    words: list[str] = []
    tags: list[str] = []
    for text, typ in segs:
        toks = tokenize(text)
        words.extend(toks)
        if typ is None:
            tags.extend(["O"] * len(toks))
        else:
            tags.extend([f"B-{typ}"] + [f"I-{typ}"] * (len(toks) - 1))
    return words, tags


def labelled_sentences(n: int, seed: int = 0, split: str = "train") -> list[tuple[list[str], list[str]]]:
    """``n`` sentences as ``(words, tags)`` with word-level BIO tags from :data:`LABELS`.

    ``split="train"`` / ``"test"`` draw entities from disjoint name lists; ``"all"`` from all names.
    A small share are headlines or start with a news dateline, like the documents."""
    g = _Gen(seed, split)
    out = []
    for _ in range(n):
        r = g.rng.random()
        if r < 0.06:
            segs = g.headline_segments()
        elif r < 0.12:
            segs = g.expand(_NEWS_DATELINE) + g.sentence_segments()
        else:
            segs = g.sentence_segments()
        out.append(_segments_to_words(segs))
    return out


def sentences(n: int, seed: int = 0, split: str = "all") -> list[str]:
    """``n`` plain-text sentences (no labels)."""
    g = _Gen(seed, split)
    return ["".join(t for t, _ in g.sentence_segments()) for _ in range(n)]


def _n_sentences(rng: random.Random, long_tail: bool) -> int:
    """Sentences per document.

    long_tail: a lognormal body (~75% of all documents have 1-2 sentences, ~20% have 3-12) mixed with a
    Pareto tail (6% of documents, 17-60 sentences: mostly ~350-550 word pieces, about 1% of all documents
    beyond 512 and up to ~1,500). Measured with the MiniLM tokenizer on 10,000 documents: median 28
    word pieces, p90 ~100, p95 ~330, p99 ~525, max ~1,200; 81% <= 64, 3% in 350-512, 1% > 512.
    Otherwise 1-3 sentences, uniformly."""
    if not long_tail:
        return rng.randint(1, 3)
    if rng.random() < 0.06:
        return min(60, int(17 * rng.paretovariate(3.5)))
    return max(1, min(12, int(round(math.exp(rng.gauss(0.3, 0.75))))))


def documents(n: int, seed: int = 0, long_tail: bool = True, split: str = "all") -> list[str]:
    """``n`` news-like documents (plain text). With ``long_tail`` the length distribution is long-tailed:
    most documents are one or two sentences, some a paragraph or two, a few around 512 tokens and a
    handful beyond. Longer documents get an occasional headline, a dateline and paragraph breaks."""
    g = _Gen(seed, split)
    rng = g.rng
    docs = []
    for _ in range(n):
        k = _n_sentences(rng, long_tail)
        parts: list[str] = []
        if k >= 4 and rng.random() < 0.4:
            parts.append("".join(t for t, _ in g.headline_segments()) + "\n\n")
        if k >= 3 and rng.random() < 0.5:
            parts.append("".join(t for t, _ in g.expand(_NEWS_DATELINE)))
        since_break = 0
        for i in range(k):
            parts.append("".join(t for t, _ in g.sentence_segments()))
            since_break += 1
            if i < k - 1:
                if since_break >= 2 and rng.random() < 0.35:
                    parts.append("\n\n")
                    since_break = 0
                else:
                    parts.append(" ")
        docs.append("".join(parts))
    return docs


# --------------------------------------------------------------------------------------------------
# The laptop job's sample corpus (jobs/data/)
# --------------------------------------------------------------------------------------------------

SAMPLE_ROWS = 200
SAMPLE_SEED = 7  # chosen so the sample has a few documents near 512 tokens and four beyond
# Deliberately bad rows (id == line number, 0-based), to show the job's error handling; the rest are
# documents(SAMPLE_ROWS, seed=SAMPLE_SEED)[id].
SAMPLE_BAD_ROWS = {10: None, 100: "", 150: 42}


def sample_rows(n: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED, bad: dict | None = None) -> list[dict]:
    """Rows ``{"id": i, "text": ...}`` for ``i`` in ``range(n)``: generated documents, with ``bad``
    (default :data:`SAMPLE_BAD_ROWS`) overriding the text at those ids."""
    bad = SAMPLE_BAD_ROWS if bad is None else bad
    docs = documents(n, seed=seed, long_tail=True)
    return [{"id": i, "text": bad[i] if i in bad else t} for i, t in enumerate(docs)]


def write_sample(out_dir: str = "jobs/data", n: int = SAMPLE_ROWS, seed: int = SAMPLE_SEED) -> tuple[str, str]:
    """Write ``sample.jsonl`` (all rows, bad ones included) and ``sample.parquet`` (the good rows only,
    ``id`` int64 and ``text`` string) into ``out_dir``."""
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = sample_rows(n, seed)
    jsonl = out / "sample.jsonl"
    with jsonl.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    good = [r for r in rows if isinstance(r["text"], str) and r["text"]]
    table = pa.table({"id": pa.array([r["id"] for r in good], pa.int64()),
                      "text": pa.array([r["text"] for r in good], pa.string())})
    parquet = out / "sample.parquet"
    pq.write_table(table, parquet)
    return str(jsonl), str(parquet)


def _main(argv=None) -> int:  # pragma: no cover - CLI
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.corpus", description="Preview the generated corpus, or "
                                "write the laptop job's sample files.")
    p.add_argument("--write-sample", metavar="DIR", help="write DIR/sample.jsonl and DIR/sample.parquet")
    p.add_argument("-n", type=int, default=5, help="sentences / documents to preview")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.write_sample:
        for path in write_sample(args.write_sample):
            print("wrote", path)
        return 0
    for words, tags in labelled_sentences(args.n, seed=args.seed):
        print(" ".join(f"{w}/{t}" if t != "O" else w for w, t in zip(words, tags)))
    print()
    for d in documents(args.n, seed=args.seed):
        print(repr(d[:300]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
